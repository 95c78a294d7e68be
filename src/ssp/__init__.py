"""Safety Self-Play: one policy, two roles (Attacker, Defender), a judge and a reflective UCB replay pool."""

__version__ = "0.1.0"
