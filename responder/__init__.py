"""The webhook responder: Alertmanager notifications in, decisions and remediations out."""
