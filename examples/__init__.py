"""Apps that guard their routes with keystile, each short enough to copy. Run one from the repository root:

    export KEYSTILE_DATABASE_URL=sqlite+aiosqlite:///./keystile.db KEYSTILE_SECRET_KEY=<32+ random characters>
    keystile migrate
    KEYSTILE_PASSWORD=... keystile users create --email you@example.com
    keystile keys create --email you@example.com --name demo --scopes reports:write
    uvicorn examples.starlette_app:app      # or examples.litestar_app:app, examples.fastapi_app:app
    curl -H "X-API-Key: ks_..." localhost:8000/api/whoami

Each reads the same KEYSTILE_* settings as the keystile service, so it verifies the keys that service issues.
"""
