"""The merchant cabinet (issue 8): users, passwords, sessions and the web pages."""
