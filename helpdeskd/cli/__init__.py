"""The command line: parse arguments, call services, print results."""
