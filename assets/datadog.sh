#!/usr/bin/env bash
# Installed by ddslug as .profile.d/datadog.sh; Heroku sources it at dyno start (and in
# `heroku run bash`). The ddslug binary in the slug does the work: `dyno prepare` writes the
# agent's configuration and prints exports, the app's datadog/prerun.sh is sourced here in
# the same shell (so it can change variables or disable the agent), and `dyno start`
# launches the agents in the background. A failure never stops the app from starting.
__ddslug="$HOME/.ddslug/bin/ddslug"
if [ -x "$__ddslug" ]; then
    # Runs one step inside the command substitution's subshell, which exports the settings as
    # this shell has them, exported or not (the classic script read shell variables); `unset`
    # ones stay unset. The app's own environment is left as it was. No fork beyond $(...).
    __ddslug_step() {
        set -f
        local IFS=$', \t\n'
        builtin export "${!DD_@}" DISABLE_DATADOG_AGENT DYNO HEROKU_APP_NAME \
            ENABLE_HEROKU_POSTGRES POSTGRES_URL_VAR ENABLE_HEROKU_REDIS REDIS_URL_VAR \
            DATABASE_URL REDIS_URL ${DD_POSTGRES_URL_VAR-} ${POSTGRES_URL_VAR-} \
            ${DD_REDIS_URL_VAR-} ${REDIS_URL_VAR-} 2>/dev/null
        builtin exec "$__ddslug" dyno "$@"
    }
    # A failed prepare has said why; start then only sets the app's exports.
    __ddslug_failed=
    __ddslug_out="$(__ddslug_step prepare)" || __ddslug_failed=--no-agents
    eval "$__ddslug_out"
    __ddslug_app="${DD_HEROKU_CONF_FOLDER:-$HOME/datadog}"
    if [ -e "$__ddslug_app/prerun.sh" ]; then
        # shellcheck source=/dev/null
        source "$__ddslug_app/prerun.sh"
    fi
    eval "$(__ddslug_step start ${__ddslug_failed:+"$__ddslug_failed"})"
    unset -f __ddslug_step
else
    echo "[datadog] $__ddslug is missing from the slug; the Datadog Agent will not start" >&2
fi
unset __ddslug __ddslug_app __ddslug_out __ddslug_failed
