// Package opstest holds only tests, of what the repository ships for
// operations rather than of Go code: the systemd units in systemd/ pass
// `systemd-analyze verify` without a single warning and start the binary with
// flags it has; the Ansible roles in ansible/ pass ansible-lint (production
// profile) and a syntax check; and site.yml, run for real against this
// machine in its process mode, installs a freshly built hearth under a
// temporary prefix, starts a one-node coordinator and an agent with a
// simulated GPU on loopback addresses, and leaves both ready, changing
// nothing when run again and restarting both when their config changes.
//
// The tools come from the distribution (make ops-tools installs them); a test
// whose tool is missing is skipped, or fails when HEARTH_REQUIRE_OPS=1, as
// make test sets it.
package opstest
