package workflow

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/hearth-gpu/hearth/proto"
)

// ModelUse is one model file a workflow needs and where it asks for it.
type ModelUse struct {
	Node      string // node id
	ClassType string // the loader's class_type
	Input     string // the input naming the file
	Folder    string // ComfyUI models folder, e.g. "checkpoints"
	File      string // file name as the workflow spells it, relative to Folder
}

// Name is the model's catalog name, e.g.
// "checkpoints/sd_xl_base_1.0.safetensors".
func (m ModelUse) Name() string { return m.Folder + "/" + m.File }

// Models lists the model files w's loader nodes name, in node order (ids
// numerically where numeric) and by input name within a node. A file named
// by several nodes is listed once, at its first use. Loader inputs that are
// links are skipped: their value exists only at run time. A loader input
// that is missing is skipped too; ComfyUI reports it against the node with
// more context than we have. A name that could not be a file under its
// folder is an *Error for that input.
func (w Workflow) Models() ([]ModelUse, error) {
	var out []ModelUse
	seen := map[[2]string]bool{}
	for _, id := range sortedIDs(w) {
		n := w[id]
		inputs := slices.Clone(Loaders[n.ClassType])
		sort.SliceStable(inputs, func(i, j int) bool { return inputs[i].Input < inputs[j].Input })
		for _, li := range inputs {
			raw, ok := n.Inputs[li.Input]
			if !ok {
				continue
			}
			if _, _, isLink := LinkTarget(raw); isLink {
				continue
			}
			field := nodeField(id, "inputs", li.Input)
			var file string
			if !isString(raw) || json.Unmarshal(raw, &file) != nil {
				return nil, errorf(field, "must be a file name in %s (a string), not %s", li.Folder, describe(raw))
			}
			if slices.Contains(li.Builtin, file) {
				continue
			}
			if err := checkFile(li.Folder, file); err != nil {
				return nil, &Error{Field: field, Message: err.Error(), err: err}
			}
			key := [2]string{li.Folder, file}
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, ModelUse{Node: id, ClassType: n.ClassType, Input: li.Input, Folder: li.Folder, File: file})
		}
	}
	return out, nil
}

// checkFile refuses names that would not stay inside the models folder on
// the worker, or that the catalog could not hold. The specific checks come
// first so the message says what to change.
func checkFile(folder, file string) error {
	switch {
	case file == "":
		return fmt.Errorf("must name a file in %s, not be empty", folder)
	case strings.HasPrefix(file, "/") || hasDrive(file):
		return fmt.Errorf("%q must be relative to the %s folder, not an absolute path", file, folder)
	case strings.Contains(file, `\`):
		return fmt.Errorf("%q uses backslashes; write subfolders with /", file)
	case slices.Contains(strings.Split(file, "/"), ".."):
		return fmt.Errorf("%q must not contain \"..\"", file)
	}
	if err := proto.ValidateModelName(folder + "/" + file); err != nil {
		return fmt.Errorf("model name %w", err)
	}
	return nil
}

// hasDrive reports a Windows drive prefix such as "C:", which would be an
// absolute path on the machine the workflow was written on.
func hasDrive(s string) bool {
	return len(s) >= 2 && s[1] == ':' && (s[0]|0x20 >= 'a' && s[0]|0x20 <= 'z')
}

// describe names a JSON value's type for error messages without echoing an
// arbitrarily large value back.
func describe(raw json.RawMessage) string {
	switch c := firstByte(raw); {
	case c == '{':
		return "an object"
	case c == '[':
		return "a list"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case isNumber(bytes.TrimSpace(raw)):
		return "a number"
	}
	return "that value"
}
