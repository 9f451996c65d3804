"""Services between the store and files: importing sources into a project, exporting a project's results."""
