package shoal

import (
	_ "embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
	"cuelang.org/go/cue/token"
	cuejson "cuelang.org/go/encoding/json"
	cueyaml "cuelang.org/go/encoding/yaml"
)

// SchemaCUE is the schema every spec file is unified with (specs.cue).
//
//go:embed specs.cue
var SchemaCUE string

// maxSpecFile bounds one spec file, so a stray blob cannot exhaust memory.
const maxSpecFile = 4 << 20

// LoadDir loads and validates the spec tree in a directory of the local
// file system. File names in errors and sources include dir.
func LoadDir(dir string) (*Spec, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("load specs: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("load specs: %s is not a directory", dir)
	}
	return load(os.DirFS(dir), ".", func(p string) string { return filepath.Join(dir, filepath.FromSlash(p)) })
}

// LoadSpec loads and validates every .cue, .yaml, .yml and .json file under
// root in fsys. Each file holds one service, one job (an object with a
// "schedule" field) or a list of them; YAML files may also hold several
// documents. Hidden files and directories are skipped.
//
// A spec with errors returns a *ValidationError listing every error found in
// the tree, each with file, line, column and field path.
func LoadSpec(fsys fs.FS, root string) (*Spec, error) {
	return load(fsys, root, func(p string) string { return p })
}

func load(fsys fs.FS, root string, display func(string) string) (*Spec, error) {
	root = path.Clean(strings.TrimPrefix(root, "/"))
	if root == "" {
		root = "."
	}
	l := newLoader()
	var files []string
	err := fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if p != root && strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if name == "cue.mod" {
				return fs.SkipDir
			}
			return nil
		}
		switch path.Ext(name) {
		case ".cue", ".yaml", ".yml", ".json":
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load specs under %s: %w", root, err)
	}
	sort.Strings(files) // WalkDir is lexical already; sorting states the contract
	for _, p := range files {
		data, err := readLimited(fsys, p)
		if err != nil {
			l.errs = append(l.errs, FieldError{File: display(p), Message: err.Error()})
			continue
		}
		l.file(display(p), data)
	}
	return l.finish()
}

func readLimited(fsys fs.FS, p string) ([]byte, error) {
	st, err := fs.Stat(fsys, p)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if st.Size() > maxSpecFile {
		return nil, fmt.Errorf("file is %d bytes, larger than the %d-byte limit for a spec file", st.Size(), maxSpecFile)
	}
	data, err := fs.ReadFile(fsys, p)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return data, nil
}

// loader accumulates the declarations and errors of one spec tree.
type loader struct {
	ctx      *cue.Context
	service  cue.Value
	job      cue.Value
	services []Service
	jobs     []Job
	errs     []FieldError
	seen     map[string]FieldError // name → where first declared
	// hostPorts are the ports host-networked processes bind on the node
	// itself, checked in finish against every service's balancer port.
	hostPorts []hostPort
}

type hostPort struct {
	port int
	at   FieldError // where it is declared
}

func newLoader() *loader {
	// A cue.Context is not safe for concurrent use; one per load keeps
	// LoadSpec safe to call from several goroutines.
	ctx := cuecontext.New()
	schema := ctx.CompileString(SchemaCUE, cue.Filename("specs.cue"))
	if err := schema.Err(); err != nil {
		panic(fmt.Sprintf("shoal: embedded schema does not compile: %v", err))
	}
	return &loader{
		ctx:     ctx,
		service: schema.LookupPath(cue.ParsePath("#Service")),
		job:     schema.LookupPath(cue.ParsePath("#Job")),
		seen:    map[string]FieldError{},
	}
}

// file parses one file and validates every declaration in it.
func (l *loader) file(name string, data []byte) {
	defer func() {
		// The CUE evaluator has panicked on pathological input before; a
		// spec file must never take the agent down.
		if r := recover(); r != nil {
			l.errs = append(l.errs, FieldError{File: name, Message: fmt.Sprintf("cannot evaluate file: %v", r)})
		}
	}()
	v, err := l.parse(name, data)
	if err != nil {
		l.errs = append(l.errs, convertErrors(err, name, cue.Value{}, "")...)
		return
	}
	if err := v.Err(); err != nil {
		l.errs = append(l.errs, convertErrors(err, name, cue.Value{}, "")...)
		return
	}
	switch v.IncompleteKind() {
	case cue.NullKind, cue.TopKind:
		return // an empty file declares nothing
	case cue.ListKind:
		it, err := v.List()
		if err != nil {
			l.errs = append(l.errs, convertErrors(err, name, v, "")...)
			return
		}
		for i := 0; it.Next(); i++ {
			e, prefix := it.Value(), fmt.Sprintf("[%d]", i)
			if e.IncompleteKind() != cue.ListKind {
				l.decl(name, e, prefix)
				continue
			}
			// A YAML stream of documents arrives as a list; a document
			// may itself be a list of declarations.
			inner, err := e.List()
			if err != nil {
				l.errs = append(l.errs, convertErrors(err, name, e, prefix)...)
				continue
			}
			for j := 0; inner.Next(); j++ {
				l.decl(name, inner.Value(), fmt.Sprintf("%s[%d]", prefix, j))
			}
		}
	case cue.StructKind:
		if isEmptyStruct(v) {
			return
		}
		l.decl(name, v, "")
	default:
		l.errs = append(l.errs, errAt(name, v.Pos(), "", "a spec file holds a service or job object, or a list of them; found "+v.IncompleteKind().String()))
	}
}

func isEmptyStruct(v cue.Value) bool {
	it, err := v.Fields(cue.Optional(true), cue.Definitions(true))
	return err == nil && !it.Next()
}

func (l *loader) parse(name string, data []byte) (cue.Value, error) {
	switch path.Ext(name) {
	case ".yaml", ".yml":
		f, err := cueyaml.Extract(name, data)
		if err != nil {
			return cue.Value{}, err
		}
		return l.ctx.BuildFile(f), nil
	case ".json":
		expr, err := cuejson.Extract(name, data)
		if err != nil {
			return cue.Value{}, err
		}
		return l.ctx.BuildExpr(expr), nil
	default:
		return l.ctx.CompileBytes(data, cue.Filename(name)), nil
	}
}

// decl validates one declaration: a service, or a job when it has a schedule.
func (l *loader) decl(file string, v cue.Value, prefix string) {
	if v.IncompleteKind() != cue.StructKind {
		l.errs = append(l.errs, errAt(file, v.Pos(), prefix, "want a service or job object, found "+v.IncompleteKind().String()))
		return
	}
	isJob := v.LookupPath(cue.ParsePath("schedule")).Exists()
	def := l.service
	if isJob {
		def = l.job
	}
	u := def.Unify(v)
	if err := u.Validate(cue.Concrete(true)); err != nil {
		l.errs = append(l.errs, convertErrors(err, file, v, prefix)...)
		return
	}
	src := Source{File: file, Line: v.Pos().Line()}
	var name string
	var errs []FieldError
	if isJob {
		var j Job
		if err := decodeStrict(u, &j); err != nil {
			l.errs = append(l.errs, errAt(file, v.Pos(), prefix, err.Error()))
			return
		}
		j.Source = src
		errs = checkJob(&j)
		name = j.Name
		if len(errs) == 0 {
			l.jobs = append(l.jobs, j)
		}
	} else {
		var s Service
		if err := decodeStrict(u, &s); err != nil {
			l.errs = append(l.errs, errAt(file, v.Pos(), prefix, err.Error()))
			return
		}
		s.Source = src
		errs = checkService(&s)
		name = s.Name
		if s.Network == NetworkHost {
			for i, p := range s.Ports {
				if p.Target > 0 {
					path := fmt.Sprintf("ports[%d].target", i)
					l.hostPorts = append(l.hostPorts, hostPort{p.Target, errAt(file, posOf(v, path), joinPath(prefix, path), "")})
				}
			}
		}
		if len(errs) == 0 {
			l.services = append(l.services, s)
		}
	}
	for _, e := range errs {
		l.errs = append(l.errs, errAt(file, posOf(v, e.Path), joinPath(prefix, e.Path), e.Message))
	}
	here := errAt(file, posOf(v, "name"), joinPath(prefix, "name"), "")
	if first, dup := l.seen[name]; dup {
		here.Message = fmt.Sprintf("duplicate name %q, first declared at %s:%d:%d", name, first.File, first.Line, first.Column)
		l.errs = append(l.errs, here)
	} else {
		l.seen[name] = here
	}
}

func (l *loader) finish() (*Spec, error) {
	balancer := map[int]string{}
	for _, s := range l.services {
		for _, p := range s.Ports {
			balancer[p.Port] = s.Name
		}
	}
	for _, hp := range l.hostPorts {
		e := hp.at
		if svc, ok := balancer[hp.port]; ok {
			e.Message = fmt.Sprintf("host port %d is where the balancer serves service %q on every node: choose another target", hp.port, svc)
			l.errs = append(l.errs, e)
		} else if slices.Contains(AgentPorts, hp.port) {
			e.Message = fmt.Sprintf("host port %d is one of the agent's own ports %v: choose another target", hp.port, AgentPorts)
			l.errs = append(l.errs, e)
		}
	}
	if len(l.errs) > 0 {
		return nil, &ValidationError{Errors: l.errs}
	}
	spec := &Spec{Services: l.services, Jobs: l.jobs}
	if spec.Services == nil {
		spec.Services = []Service{}
	}
	if spec.Jobs == nil {
		spec.Jobs = []Job{}
	}
	sort.Slice(spec.Services, func(i, j int) bool { return spec.Services[i].Name < spec.Services[j].Name })
	sort.Slice(spec.Jobs, func(i, j int) bool { return spec.Jobs[i].Name < spec.Jobs[j].Name })
	spec.Hash = spec.computeHash()
	return spec, nil
}

// computeHash digests the normalized spec: defaults filled in, declarations
// sorted by name, sources left out, so neither file layout nor key order
// changes it.
func (s *Spec) computeHash() string {
	return digest(struct {
		Services []Service `json:"services"`
		Jobs     []Job     `json:"jobs"`
	}{s.Services, s.Jobs})
}

func posOf(v cue.Value, p string) token.Pos {
	for p != "" {
		if f := v.LookupPath(cue.ParsePath(p)); f.Exists() && f.Pos().IsValid() {
			return f.Pos()
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return v.Pos()
}

func joinPath(prefix, p string) string {
	switch {
	case prefix == "":
		return p
	case p == "" || strings.HasPrefix(p, "["):
		return prefix + p
	default:
		return prefix + "." + p
	}
}

func errAt(file string, pos token.Pos, fieldPath, msg string) FieldError {
	e := FieldError{File: file, Path: fieldPath, Message: msg}
	if pos.IsValid() {
		e.Line, e.Column = pos.Line(), pos.Column()
	}
	return e
}

// cuePathString turns CUE's path (["#Service", "ports", "0", "port"]) into
// "ports[0].port", dropping the schema definition it was unified with.
func cuePathString(sel []string) string {
	var b strings.Builder
	for _, s := range sel {
		if strings.HasPrefix(s, "#") {
			continue
		}
		if s != "" && s[0] >= '0' && s[0] <= '9' {
			b.WriteString("[" + s + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	return b.String()
}
