"""Profiling recipes (py-spy flamegraphs, line_profiler) and their driver.

See ``profiles/README.md``; :mod:`.recipes` builds the commands, :mod:`.run`
is the program they profile.
"""
