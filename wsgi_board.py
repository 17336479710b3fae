"""WSGI entry point of the View Board Service: `gunicorn wsgi_board:app`."""

from app import create_board_app

app = create_board_app()
