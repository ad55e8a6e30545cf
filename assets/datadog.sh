#!/usr/bin/env bash
# Installed by ddslug as .profile.d/datadog.sh; Heroku sources it at dyno start (and in
# `heroku run bash`). The ddslug binary in the slug does the work: `dyno prepare` writes the
# agent's configuration and prints exports, the app's datadog/prerun.sh is sourced here in
# the same shell (so it can change variables or disable the agent), and `dyno start`
# launches the agents in the background. A failure never stops the app from starting.
__ddslug="$HOME/.ddslug/bin/ddslug"
if [ -x "$__ddslug" ]; then
    eval "$("$__ddslug" dyno prepare)"
    __ddslug_app="${DD_HEROKU_CONF_FOLDER:-$HOME/datadog}"
    if [ -e "$__ddslug_app/prerun.sh" ]; then
        # shellcheck source=/dev/null
        source "$__ddslug_app/prerun.sh"
    fi
    eval "$("$__ddslug" dyno start)"
else
    echo "[datadog] $__ddslug is missing from the slug; the Datadog Agent will not start" >&2
fi
unset __ddslug __ddslug_app
