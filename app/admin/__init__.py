"""The admin routes of the Increment Service: boards and moderation, for tokens with the admin role."""
