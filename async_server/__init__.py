"""twinchat's asyncio server: one event loop, one task per connection."""
