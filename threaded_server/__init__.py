"""twinchat's threaded server: one thread per connection, blocking reads."""
