"""What every stage shares: one-line user errors and the CLI frame, output checks and atomic files,
class labels, infer's output-folder ownership.
"""
