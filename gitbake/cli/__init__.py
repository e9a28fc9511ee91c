"""The command line: click is imported only here."""
