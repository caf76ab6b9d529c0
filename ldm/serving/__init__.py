"""Serving: the Flask app (app.py: routes; configure.py: from conf/app.yaml), jobs and their render worker
(jobs.py, worker.py, estimates.py), request fields (forms.py), one submit path for every API (submission.py),
who may call (hosts.py, auth.py, owners.py, security.py), bounds (streams.py), images on disk (store.py), the
A1111 and OpenAI layers (a1111.py, openai_images.py), the WSGI server (server.py); templates/ holds the page."""
