"""Serving: the Flask app (app.py: routes), jobs and their render worker (jobs.py, worker.py), request fields
(forms.py), protections (security.py), the WSGI server (server.py); templates/ holds the page."""
