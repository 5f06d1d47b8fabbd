"""Children and their output: spawning, the process table, the retained-output log, env policy."""
