"""The command-line commands; bench/__main__.py parses and dispatches to them."""
