"""postLink notifications: a transactional outbox and its delivery worker."""
