"""Question modules, one per exercise: ``exNN_<topic>.py``, each defining ``QUESTIONS``.

Every module is discovered by :func:`structdrop_tutorial.grade.all_questions` (the registry); question
ids are ``"exNN.<short>"`` and must start with the module's ``exNN``.
"""
