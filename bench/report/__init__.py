"""Views of a finished run, rendered from results.json alone: tables, Markdown, HTML, CSV, plots, the console."""
