"""Reward functions for RL with verifiable rewards: math, format, Countdown, and a registry."""
