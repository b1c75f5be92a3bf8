"""The simulation engine: command line, scenario schema, Mesa model, run store and live console."""
