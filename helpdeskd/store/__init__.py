"""The database and the files under the state folder: models, sessions, read models."""
