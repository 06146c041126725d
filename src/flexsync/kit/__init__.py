"""Small shared helpers: errors, JSON responses, pagination, hashing."""
