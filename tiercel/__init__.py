"""tiercel: make remote-sensing vision-language models (Falcon, Florence-2) small and fast for the field.

Stages: distill -> export -> quantize -> runtime. Importing `tiercel` is cheap and pulls in no torch;
each stage package imports its heavy dependencies itself.
"""

__version__ = "0.1.0"
