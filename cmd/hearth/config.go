package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The configuration file. The daemons' flag sets are the single source of
// truth: every flag of `hearth agent` and `hearth coordinator` is a key of
// the file's agent: or coordinator: section (the flag's name in snake_case:
// --cache-max is cache_max) and an environment variable
// HEARTH_<SECTION>_<KEY> (HEARTH_AGENT_CACHE_MAX). A flag added to a daemon
// is settable from all three without more code. Values are applied with
// flag.FlagSet.Set, so a bad value fails with the flag's own parse error.
//
// Precedence: a flag's default < the file < the environment < the command
// line. Top-level keys other than the sections (log_level, data_dir, ...)
// apply to every daemon that has that flag, below the section's own value.
//
// Secrets come from files: any key takes {file: PATH} as its value, and a
// key NAME_file (env HEARTH_<SECTION>_NAME_FILE) reads NAME from a file,
// unless NAME_file is itself a flag (tokens_file, peer_token_file).

// configSections are the daemons the file configures.
var configSections = []string{"coordinator", "agent"}

// configFlagName is the flag that names the file on both daemons.
const configFlagName = "config"

// sectionOf returns the config section a flag set belongs to, or "".
func sectionOf(fs *flag.FlagSet) string {
	name := strings.TrimPrefix(fs.Name(), "hearth ")
	if slices.Contains(configSections, name) {
		return name
	}
	return ""
}

func keyOf(flagName string) string { return strings.ReplaceAll(flagName, "-", "_") }
func flagOf(key string) string     { return strings.ReplaceAll(key, "_", "-") }
func envOf(section, key string) string {
	return "HEARTH_" + strings.ToUpper(section) + "_" + strings.ToUpper(key)
}

// configError is one problem in a config file, at its position.
type configError struct {
	file      string
	line, col int
	msg       string
}

func (e configError) Error() string {
	if e.line == 0 {
		return fmt.Sprintf("%s: %s", e.file, e.msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.file, e.line, e.col, e.msg)
}

// configSetting is one key's value from the file, ready for flag.Set.
type configSetting struct {
	key        string // as written, e.g. token_file
	flag       string // the flag it sets
	value      string
	line, col  int
	fromShared bool
}

// configFile is a parsed config file.
type configFile struct {
	path string
	// settings per section, in file order: shared keys first.
	settings map[string][]configSetting
	present  map[string]bool // sections the file has
	errs     []error
}

// daemonFlags returns the flag set of each daemon, built by running its
// command up to flag parsing (see flagCapture).
func daemonFlags(section string) *flag.FlagSet {
	c := &flagCapture{Writer: io.Discard}
	switch section {
	case "coordinator":
		_ = runCoordinator(nil, c)
	case "agent":
		_ = runAgent(nil, c)
	}
	return c.fs
}

// flagCapture, passed as a daemon's stderr, makes parseFlags hand back the
// daemon's flag set instead of parsing (capture) or stop the daemon right
// before it would start (dryRun, for `config validate`).
type flagCapture struct {
	io.Writer
	fs     *flag.FlagSet
	dryRun bool
	noEnv  bool
}

// errCaptured ends a daemon's command once its flags were captured.
var errCaptured = errors.New("flags captured")

// dryRunDone reports whether the daemon's command should stop here, having
// checked its configuration without starting anything.
func dryRunDone(stderr io.Writer) bool {
	c, ok := stderr.(*flagCapture)
	return ok && c.dryRun
}

// readConfigFile parses path against the daemons' flag sets. Problems are
// collected in errs, each with its file position.
func readConfigFile(path string, flags map[string]*flag.FlagSet) (*configFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the config file: %w", err)
	}
	cf := &configFile{path: path, settings: map[string][]configSetting{}, present: map[string]bool{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		cf.errs = append(cf.errs, yamlSyntaxError(path, err))
		return cf, nil
	}
	if len(doc.Content) == 0 {
		return cf, nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		cf.errs = append(cf.errs, cf.at(root, "the file must be a mapping with coordinator: and agent: sections"))
		return cf, nil
	}
	var shared []*yaml.Node // key, value pairs
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if slices.Contains(configSections, k.Value) {
			cf.present[k.Value] = true
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				continue
			}
			if v.Kind != yaml.MappingNode {
				cf.errs = append(cf.errs, cf.at(v, "%s: must be a mapping of keys to values", k.Value))
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				if s, ok := cf.setting(k.Value, v.Content[j], v.Content[j+1], flags[k.Value], flags); ok {
					cf.settings[k.Value] = append(cf.settings[k.Value], s)
				}
			}
			continue
		}
		shared = append(shared, k, v)
	}
	for i := 0; i+1 < len(shared); i += 2 {
		k, v := shared[i], shared[i+1]
		used := false
		for _, sec := range configSections {
			if !cf.known(k.Value, flags[sec]) {
				continue
			}
			used = true
			if s, ok := cf.setting(sec, k, v, flags[sec], flags); ok {
				s.fromShared = true
				cf.settings[sec] = append(cf.settings[sec], s)
			}
		}
		if !used {
			var all []string
			for _, sec := range configSections {
				all = append(all, configKeys(flags[sec])...)
			}
			all = append(all, configSections...)
			cf.errs = append(cf.errs, cf.at(k, "%s: unknown key%s", k.Value, meanHint(didYouMean(k.Value, all))))
		}
	}
	// Shared keys sit below the section's own: apply them first.
	for sec, ss := range cf.settings {
		sort.SliceStable(ss, func(a, b int) bool { return ss[a].fromShared && !ss[b].fromShared })
		cf.settings[sec] = ss
	}
	return cf, nil
}

// known reports whether key names a flag of fs, directly or as NAME_file.
func (cf *configFile) known(key string, fs *flag.FlagSet) bool {
	if fs == nil || key == configFlagName || strings.Contains(key, "-") {
		return false // keys are snake_case only
	}
	if fs.Lookup(flagOf(key)) != nil {
		return true
	}
	base, ok := strings.CutSuffix(key, "_file")
	return ok && fs.Lookup(flagOf(base)) != nil
}

// setting checks one key: value pair of section against its flags.
func (cf *configFile) setting(section string, k, v *yaml.Node, fs *flag.FlagSet, all map[string]*flag.FlagSet) (configSetting, bool) {
	if !cf.known(k.Value, fs) {
		hint := meanHint(didYouMean(k.Value, configKeys(fs)))
		for _, other := range configSections {
			if other != section && cf.known(k.Value, all[other]) && hint == "" {
				hint = fmt.Sprintf(" (it belongs in the %s: section)", other)
			}
		}
		cf.errs = append(cf.errs, cf.at(k, "%s.%s: unknown key%s", section, k.Value, hint))
		return configSetting{}, false
	}
	s := configSetting{key: k.Value, flag: flagOf(k.Value), line: k.Line, col: k.Column}
	fromFile := ""
	if fs.Lookup(s.flag) == nil { // NAME_file
		s.flag = flagOf(strings.TrimSuffix(k.Value, "_file"))
		if v.Kind != yaml.ScalarNode {
			cf.errs = append(cf.errs, cf.at(v, "%s.%s: must be the path of a file", section, k.Value))
			return s, false
		}
		fromFile = v.Value
	}
	switch {
	case fromFile != "":
	case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
		return s, false // key: with no value keeps the default
	case v.Kind == yaml.ScalarNode:
		s.value = v.Value
	case v.Kind == yaml.SequenceNode:
		var items []string
		for _, it := range v.Content {
			if it.Kind != yaml.ScalarNode {
				cf.errs = append(cf.errs, cf.at(it, "%s.%s: list items must be plain values", section, k.Value))
				return s, false
			}
			items = append(items, it.Value)
		}
		s.value = strings.Join(items, ",")
	case v.Kind == yaml.MappingNode && len(v.Content) == 2 && v.Content[0].Value == "file" && v.Content[1].Kind == yaml.ScalarNode:
		fromFile = v.Content[1].Value
	default:
		cf.errs = append(cf.errs, cf.at(v, "%s.%s: must be a value, a list, or {file: PATH}", section, k.Value))
		return s, false
	}
	if fromFile != "" {
		secret, err := readSecretFile(fromFile)
		if err != nil {
			cf.errs = append(cf.errs, cf.at(v, "%s.%s: %v", section, k.Value, err))
			return s, false
		}
		s.value = secret
	}
	// The flag's own parser checks the value, on a scratch flag set so a
	// check never changes the real one.
	if err := checkFlagValue(fs, s.flag, s.value); err != nil {
		cf.errs = append(cf.errs, cf.at(v, "%s.%s: %v", section, k.Value, err))
		return s, false
	}
	return s, true
}

// checkFlagValue parses value with the flag's own parser, on a scratch
// flag of the same type, so a check never changes the real flag set.
// Flags of custom types are checked when the daemon applies them.
func checkFlagValue(fs *flag.FlagSet, name, value string) error {
	g, ok := fs.Lookup(name).Value.(flag.Getter)
	if !ok {
		return nil
	}
	scratch := flag.NewFlagSet("check", flag.ContinueOnError)
	scratch.SetOutput(io.Discard)
	switch g.Get().(type) {
	case bool:
		scratch.Bool(name, false, "")
	case int:
		scratch.Int(name, 0, "")
	case int64:
		scratch.Int64(name, 0, "")
	case uint:
		scratch.Uint(name, 0, "")
	case uint64:
		scratch.Uint64(name, 0, "")
	case float64:
		scratch.Float64(name, 0, "")
	case time.Duration:
		scratch.Duration(name, 0, "")
	default:
		return nil
	}
	if err := scratch.Set(name, value); err != nil {
		return trimFlagErr(value, err)
	}
	return nil
}

// trimFlagErr phrases a flag.Set error (the Value's own, such as "parse
// error") with the value; the caller names the key or variable.
func trimFlagErr(value string, err error) error {
	return fmt.Errorf("invalid value %q: %w", value, err)
}

// readSecretFile reads a secret, dropping surrounding white space.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read the secret file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}

func (cf *configFile) at(n *yaml.Node, format string, args ...any) error {
	return configError{file: cf.path, line: n.Line, col: n.Column, msg: fmt.Sprintf(format, args...)}
}

// yamlSyntaxError puts a YAML parse error in file:line:column form.
func yamlSyntaxError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		_, rest, _ := strings.Cut(msg, ": ")
		return configError{file: path, line: line, col: 1, msg: "YAML syntax: " + rest}
	}
	return configError{file: path, msg: "YAML syntax: " + msg}
}

// configKeys lists the keys a flag set accepts.
func configKeys(fs *flag.FlagSet) []string {
	var out []string
	if fs == nil {
		return nil
	}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != configFlagName {
			out = append(out, keyOf(f.Name))
		}
	})
	return out
}

// didYouMean returns the closest of keys to k, if one is close, or "".
func didYouMean(k string, keys []string) string {
	norm := strings.ToLower(strings.ReplaceAll(k, "-", "_"))
	best, bestD := "", 1<<30
	for _, c := range keys {
		if d := editDistance(norm, c); d < bestD {
			best, bestD = c, d
		}
	}
	if best != "" && (bestD <= 2 || bestD <= len(best)/3) {
		return best
	}
	return ""
}

// meanHint formats a suggestion from didYouMean.
func meanHint(s string) string {
	if s == "" {
		return ""
	}
	return " (did you mean " + s + "?)"
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// applyConfig sets fs's flags from the config file and the environment,
// leaving alone those given on the command line.
func applyConfig(fs *flag.FlagSet, section string, noEnv bool) error {
	onCmdLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCmdLine[f.Name] = true })
	if path := fs.Lookup(configFlagName).Value.String(); path != "" {
		flags := map[string]*flag.FlagSet{section: fs}
		for _, sec := range configSections {
			if sec != section {
				flags[sec] = daemonFlags(sec)
			}
		}
		cf, err := readConfigFile(path, flags)
		if err != nil {
			return usagef("--config: %v", err)
		}
		if len(cf.errs) > 0 {
			return usagef("the config file has problems; fix them, or check it with 'hearth config validate %s':\n  %s", path, joinErrs(cf.errs))
		}
		for _, s := range cf.settings[section] {
			if onCmdLine[s.flag] {
				continue
			}
			if err := fs.Set(s.flag, s.value); err != nil {
				return usagef("%s:%d:%d: %s.%s: %v", path, s.line, s.col, section, s.key, trimFlagErr(s.value, err))
			}
		}
	}
	if noEnv {
		return nil
	}
	prefix := "HEARTH_" + strings.ToUpper(section) + "_"
	env := os.Environ()
	sort.Strings(env)
	keys := configKeys(fs)
	for _, kv := range env {
		name, val, _ := strings.Cut(kv, "=")
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		key := strings.ToLower(rest)
		fl := flagOf(key)
		if fs.Lookup(fl) == nil || fl == configFlagName {
			base, isFile := strings.CutSuffix(key, "_file")
			if !isFile || fs.Lookup(flagOf(base)) == nil {
				hint := ""
				if k := didYouMean(key, keys); k != "" {
					hint = " (did you mean " + envOf(section, k) + "?)"
				}
				return usagef("environment variable %s names no flag of hearth %s%s; unset it, or see 'hearth config defaults'", name, section, hint)
			}
			fl = flagOf(base)
			s, err := readSecretFile(val)
			if err != nil {
				return usagef("%s: %v", name, err)
			}
			val = s
		}
		if onCmdLine[fl] {
			continue
		}
		if err := fs.Set(fl, val); err != nil {
			return usagef("%s: %v", name, trimFlagErr(val, err))
		}
	}
	return nil
}

func joinErrs(errs []error) string {
	var lines []string
	for _, e := range errs {
		lines = append(lines, e.Error())
	}
	return strings.Join(lines, "\n  ")
}

// runConfig runs `hearth config validate FILE` and `hearth config defaults`.
func runConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("config needs a subcommand: validate FILE, or defaults")
	}
	switch args[0] {
	case "defaults":
		if len(args) != 1 {
			return usagef("config defaults takes no arguments")
		}
		return printDefaults(stdout)
	case "validate":
		if len(args) != 2 {
			return usagef("config validate needs one FILE")
		}
		return validateConfig(args[1], stdout)
	}
	return usagef("unknown config subcommand %q; use validate FILE or defaults", args[0])
}

// validateConfig checks a file the way the daemons read it, then runs each
// daemon whose section the file has up to the point where it would start,
// so the daemons' own checks (sizes, peers, required keys) run too.
func validateConfig(path string, stdout io.Writer) error {
	flags := map[string]*flag.FlagSet{}
	for _, sec := range configSections {
		flags[sec] = daemonFlags(sec)
	}
	cf, err := readConfigFile(path, flags)
	if err != nil {
		return usagef("%v", err)
	}
	errs := cf.errs
	if len(errs) == 0 {
		for _, sec := range configSections {
			if !cf.present[sec] {
				continue
			}
			c := &flagCapture{Writer: io.Discard, dryRun: true, noEnv: true}
			args := []string{"--" + configFlagName, path}
			switch sec {
			case "coordinator":
				err = runCoordinator(args, c)
			case "agent":
				err = runAgent(args, c)
			}
			if err != nil {
				errs = append(errs, cf.locate(sec, err))
			}
		}
	}
	if len(errs) > 0 {
		return usagef("%s is not a valid config; fix these ('hearth config defaults' lists every key):\n  %s", path, joinErrs(errs))
	}
	var secs []string
	for _, sec := range configSections {
		if cf.present[sec] {
			secs = append(secs, sec)
		}
	}
	fmt.Fprintf(stdout, "%s: ok (%s)\n", path, cmp.Or(strings.Join(secs, ", "), "no daemon sections"))
	return nil
}

// locate turns a daemon's "--flag-name: problem" into the key's position.
func (cf *configFile) locate(section string, err error) error {
	msg := err.Error()
	var ue *usageError
	if errors.As(err, &ue) {
		msg = ue.msg
	}
	if name, rest, ok := strings.Cut(msg, ": "); ok && strings.HasPrefix(name, "--") {
		fl := strings.TrimPrefix(name, "--")
		for _, s := range cf.settings[section] {
			if s.flag == fl {
				return configError{file: cf.path, line: s.line, col: s.col, msg: fmt.Sprintf("%s.%s: %s", section, s.key, rest)}
			}
		}
	}
	return configError{file: cf.path, msg: section + ": " + msg}
}

// secretFlag reports whether a flag holds a secret whose default (from the
// environment) must not be printed.
func secretFlag(name string) bool {
	for _, w := range []string{"token", "secret", "key", "password"} {
		if strings.Contains(name, w) && !strings.HasSuffix(name, "-file") {
			return true
		}
	}
	return false
}

// printDefaults writes every key of both sections with its default and
// help, as a YAML file that can serve as a starting point.
func printDefaults(w io.Writer) error {
	fmt.Fprintln(w, "# hearth configuration: every key with its default.")
	fmt.Fprintln(w, "# Keys are the daemons' flags in snake_case; HEARTH_<SECTION>_<KEY> in the")
	fmt.Fprintln(w, "# environment overrides the file, and a flag on the command line overrides both.")
	fmt.Fprintln(w, "# Any key takes {file: PATH}, and NAME_file: PATH reads NAME from a file.")
	for _, sec := range configSections {
		fmt.Fprintf(w, "\n%s:\n", sec)
		daemonFlags(sec).VisitAll(func(f *flag.Flag) {
			if f.Name == configFlagName {
				return
			}
			def := f.DefValue
			if secretFlag(f.Name) && def != "" {
				def = "" // from the environment: not printed
			}
			fmt.Fprintf(w, "  # %s (env %s)\n", f.Usage, envOf(sec, keyOf(f.Name)))
			val := yamlScalar(def)
			if g, ok := f.Value.(flag.Getter); ok {
				if _, isString := g.Get().(string); !isString {
					val = def // a bool, number or duration: YAML reads it back as written
				}
			}
			fmt.Fprintf(w, "  %s: %s\n", keyOf(f.Name), val)
		})
	}
	return nil
}

// yamlScalar quotes s when YAML would not read it back as the same string.
func yamlScalar(s string) string {
	b, err := yaml.Marshal(s)
	if err != nil {
		return fmt.Sprintf("%q", s)
	}
	return strings.TrimSpace(string(b))
}
