"""Presenters: the human (rich) and JSON views of a Plan. They read it and never recompute it."""
