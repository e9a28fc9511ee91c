"""Using a revision's model: chat, serve, export, diff, metrics (the ML stack is allowed here)."""
