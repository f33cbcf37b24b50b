package shoal

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"cuelang.org/go/cue"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/token"
)

// FieldError is one problem in a spec file, located by file, line, column
// and field path.
type FieldError struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Path    string `json:"path,omitempty"`
	Message string `json:"message"`
}

func (e FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// ValidationError lists every error found in a spec tree.
type ValidationError struct {
	Errors []FieldError `json:"errors"`
}

func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		lines[i] = fe.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes each FieldError to errors.Is and errors.As.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		errs[i] = fe
	}
	return errs
}

var (
	// Two concrete values conflicting: inside a disjunction this is the
	// default losing to the user's value, which is noise.
	literal        = `("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null)`
	literalClashRe = regexp.MustCompile(`^conflicting values ` + literal + ` and ` + literal + `( \(mismatched types \w+ and \w+\))?$`)
	disjunctionRe  = regexp.MustCompile(`errors? in empty disjunction`)
	regexBoundRe   = regexp.MustCompile(`^invalid value (.*) \(out of bound =~"(.*)"\)$`)
	yamlLineRe     = regexp.MustCompile(`^(.+?):(\d+):\s*(.*)$`)
	incompleteRe   = regexp.MustCompile(`^(incomplete value|non-concrete value)`)
	// A size bound of the schema: the message would repeat the whole
	// oversized value.
	sizeBoundRe = regexp.MustCompile(`(?s)^invalid value .* \(does not satisfy (list\.MaxItems|struct\.MaxFields|strings\.MaxRunes)\(([0-9]+)\)\)$`)
)

// sizeBoundWords says what each size bound of the schema counts.
var sizeBoundWords = map[string]string{
	"list.MaxItems":    "more than %s elements",
	"struct.MaxFields": "more than %s entries",
	"strings.MaxRunes": "longer than %s characters",
}

// patternNames turns the schema's regular expressions into words.
var patternNames = map[string]string{
	`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`:            "must be a DNS label: lowercase letters, digits and '-', starting with a letter, at most 63 characters",
	`^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`:   "must be a duration such as 500ms, 10s or 1m30s",
	`^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|K|M|G|T)?$`: "must be a size such as 256Mi, 1Gi or 512M",
	`^/`:                   "must be a path starting with /",
	`^[A-Za-z0-9_.\\-/]+$`: "must be \"node\" or a node label name",
}

// convertErrors turns CUE's errors into FieldErrors: positions in the spec
// file rather than the schema, one message per field, and the noise of
// defaults (which CUE expresses as disjunctions) removed.
func convertErrors(err error, file string, decl cue.Value, prefix string) []FieldError {
	type group struct {
		path  string
		pos   token.Pos
		msgs  []string
		clash []string // literal-vs-literal conflicts, kept for enums
		line  int      // a line known without a position
	}
	var order []string
	groups := map[string]*group{}
	for _, e := range cueerrors.Errors(err) {
		p := cuePathString(e.Path())
		g := groups[p]
		if g == nil {
			g = &group{path: p}
			groups[p] = g
			order = append(order, p)
		}
		if !g.pos.IsValid() {
			g.pos = filePos(e, file)
		}
		format, args := e.Msg()
		msg := fmt.Sprintf(format, args...)
		if strings.TrimSpace(msg) == "" {
			msg = e.Error()
		}
		// The YAML parser reports "file:line: message" with no position.
		if m := yamlLineRe.FindStringSubmatch(msg); m != nil && m[1] == file && !g.pos.IsValid() {
			line, _ := strconv.Atoi(m[2])
			g.line, msg = line, m[3]
		}
		switch {
		case disjunctionRe.MatchString(msg):
		case literalClashRe.MatchString(msg):
			g.clash = append(g.clash, msg)
		default:
			g.msgs = append(g.msgs, msg)
		}
	}
	var out []FieldError
	for _, p := range order {
		g := groups[p]
		msgs := g.msgs
		if len(msgs) == 0 && len(g.clash) > 0 {
			msgs = []string{enumMessage(g.clash)}
		}
		pos := g.pos
		if !pos.IsValid() && decl.Exists() {
			pos = posOf(decl, p)
		}
		seen := map[string]bool{}
		for _, m := range msgs {
			m = reword(m)
			if seen[m] {
				continue
			}
			seen[m] = true
			fe := errAt(file, pos, joinPath(prefix, p), m)
			if g.line > 0 {
				fe.Line, fe.Column = g.line, 1
			}
			out = append(out, fe)
		}
	}
	if len(out) == 0 && err != nil {
		out = append(out, errAt(file, token.NoPos, prefix, err.Error()))
	}
	return out
}

// filePos picks the error position that lies in the spec file itself.
func filePos(e cueerrors.Error, file string) token.Pos {
	for _, p := range e.InputPositions() {
		if p.Filename() == file {
			return p
		}
	}
	if p := e.Position(); p.IsValid() && p.Filename() == file {
		return p
	}
	return token.NoPos
}

// enumMessage rewrites the clashes of a value against every member of an
// enumeration ("forbid" | "replace") as one message naming the choices.
func enumMessage(clashes []string) string {
	count := map[string]int{}
	var vals []string
	for _, c := range clashes {
		m := literalClashRe.FindStringSubmatch(c)
		for _, v := range m[1:3] {
			if count[v] == 0 {
				vals = append(vals, v)
			}
			count[v]++
		}
	}
	var given string
	var allowed []string
	for _, v := range vals {
		if count[v] == len(clashes) && given == "" && len(clashes) > 1 {
			given = v
			continue
		}
		allowed = append(allowed, v)
	}
	if given == "" {
		return clashes[0]
	}
	return fmt.Sprintf("invalid value %s: must be one of %s", given, strings.Join(allowed, ", "))
}

func reword(m string) string {
	switch {
	case m == "field not allowed":
		return "unknown field"
	case incompleteRe.MatchString(m):
		return "missing required field"
	}
	if r := sizeBoundRe.FindStringSubmatch(m); r != nil {
		return "too large: " + fmt.Sprintf(sizeBoundWords[r[1]], r[2])
	}
	if r := regexBoundRe.FindStringSubmatch(m); r != nil {
		if name, ok := patternNames[r[2]]; ok {
			return fmt.Sprintf("invalid value %s: %s", r[1], name)
		}
	}
	return m
}
