"""WSGI entry point of the Increment Service: `gunicorn wsgi_increment:app`."""

from app import create_increment_app

app = create_increment_app()
