"""The merchant cabinet (issue 8): users, passwords, sessions; pages come later."""
