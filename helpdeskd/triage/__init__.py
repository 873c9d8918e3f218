"""What a received mail is and where it goes (pure).

Classify, loops, bounces, Heroku, threading, commands, the plan.
"""
