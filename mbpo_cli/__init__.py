"""The `mbpo` command line: one module per command group, registered in `main.py`.

May import: every package (it is the top layer); commands parse flags, call functions, print.
"""
