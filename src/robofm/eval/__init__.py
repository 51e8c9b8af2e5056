"""Closed-loop evaluation of policies on the MuJoCo tabletop benchmark."""
