"""The worked examples of docs/extending.md, verbatim: the page shows these files and the unit tests
register and run them, so the page's code is code that runs."""
