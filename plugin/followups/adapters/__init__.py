"""Adapters that plug followups into agent frameworks, one module per framework.

Each module imports its framework, so import the one you use
(``from followups.adapters.pydantic_ai import ...``); ``import followups`` and this package
import none of them. Install a framework with its extra, e.g.
``pip install 'followups[pydantic-ai]'``.
"""
