"""How the models are served: routing.py (pure routing), engine.py (decoding), experts.py and
router.py (thin deployments), http.py / openai_api.py / door.py (the API), audit.py, registry.py,
app.py (the one builder, build_app) and ops.py (serve / deploy / rollback)."""
