"""The platform's built-in tasks: research ranking, CAD meshing, brain print planning."""
