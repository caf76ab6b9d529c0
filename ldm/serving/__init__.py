"""Serving: the Flask app and its render queue (templates/ holds the page)."""
