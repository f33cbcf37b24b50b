package gitsync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"runtime/debug"
	"strings"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"

	"github.com/shoal-run/shoal"
)

// Why a child process. CUE evaluation cannot be interrupted and its cost
// is not visible in the syntax: a 94-byte comprehension over
// list.Range(0, 100000, 1) takes a minute and 600 MB, string
// interpolations that double a string forty times need a terabyte, and
// none of it needs an import or a long file. Inspecting the syntax
// (shoal.LoadSpec does, to refuse long lists quickly) cannot bound all of
// that; an operating-system process can. The child has an address-space
// rlimit and a Go memory limit, a CPU-time rlimit, and the parent kills it
// at a deadline. Whatever the child does, the agent keeps its memory and
// its last good revision, and the head is remembered on disk as refused.

// evalRequest is what the parent sends the child on its standard input.
type evalRequest struct {
	Repo        string        `json:"repo"`   // the bare clone
	Commit      string        `json:"commit"` // the head to evaluate
	Path        string        `json:"path"`   // Config.Path
	MemoryLimit int64         `json:"memory_limit"`
	CPULimit    time.Duration `json:"cpu_limit"`
}

// evalResponse is what the child writes on its standard output.
type evalResponse struct {
	Spec *shoal.Spec `json:"spec,omitempty"`
	// Sources carries Source of each declaration ("service/NAME",
	// "job/NAME"), which the spec's JSON leaves out.
	Sources  map[string]shoal.Source `json:"sources,omitempty"`
	Invalid  *shoal.ValidationError  `json:"invalid,omitempty"`
	NotExist string                  `json:"not_exist,omitempty"` // the spec path is missing
	StoreErr string                  `json:"store_err,omitempty"` // the clone is damaged
	Err      string                  `json:"err,omitempty"`       // another failure
}

// maxEvalOutput bounds what is read back from the child.
const maxEvalOutput = 64 << 20

// ServeEvaluation is the child's side: it reads a request from in,
// limits its own memory and CPU time, evaluates the commit's spec tree and
// writes the result to out. The shoal binary runs it from a hidden
// subcommand; Config.EvalCommand names that command line.
func ServeEvaluation(in io.Reader, out io.Writer) error {
	var req evalRequest
	if err := json.NewDecoder(io.LimitReader(in, 1<<20)).Decode(&req); err != nil {
		return fmt.Errorf("gitsync: evaluation request: %w", err)
	}
	if req.MemoryLimit > 0 {
		// The Go limit makes the collector work hard first; the rlimit
		// (where there is one) is the wall.
		debug.SetMemoryLimit(req.MemoryLimit * 3 / 4)
		if err := limitProcess(req.MemoryLimit, req.CPULimit); err != nil {
			return fmt.Errorf("gitsync: limit the evaluation: %w", err)
		}
	}
	resp := evaluateCommit(req)
	return json.NewEncoder(out).Encode(resp)
}

func evaluateCommit(req evalRequest) (resp evalResponse) {
	repo, err := git.PlainOpen(req.Repo)
	if err != nil {
		return evalResponse{StoreErr: fmt.Sprintf("open clone: %v", err)}
	}
	c, err := repo.CommitObject(plumbing.NewHash(req.Commit))
	if err != nil {
		return evalResponse{StoreErr: fmt.Sprintf("read commit: %v", err)}
	}
	tree, err := c.Tree()
	if err != nil {
		return evalResponse{StoreErr: fmt.Sprintf("read tree: %v", err)}
	}
	tfs := newTreeFS(tree, c.Committer.When)
	spec, err := shoal.LoadSpec(tfs, req.Path)
	return specResponse(spec, err, tfs.storeError())
}

// specResponse turns LoadSpec's result into a response.
func specResponse(spec *shoal.Spec, err, storeErr error) evalResponse {
	var ve *shoal.ValidationError
	switch {
	case storeErr != nil:
		return evalResponse{StoreErr: storeErr.Error()}
	case errors.As(err, &ve):
		return evalResponse{Invalid: ve}
	case errors.Is(err, fs.ErrNotExist):
		return evalResponse{NotExist: err.Error()}
	case err != nil:
		return evalResponse{Err: err.Error()}
	}
	src := make(map[string]shoal.Source, len(spec.Services)+len(spec.Jobs))
	for _, s := range spec.Services {
		src["service/"+s.Name] = s.Source
	}
	for _, j := range spec.Jobs {
		src["job/"+j.Name] = j.Source
	}
	return evalResponse{Spec: spec, Sources: src}
}

// evalCrash is an evaluation that did not finish: the child was killed,
// ran out of memory or time, or crashed. The head is refused for good.
type evalCrash struct{ msg string }

func (e *evalCrash) Error() string { return e.msg }

// evaluateInChild runs Config.EvalCommand on one commit. It returns the
// child's response, an *evalCrash when the evaluation did not finish, or
// another error when the child could not be run at all (or ctx ended).
func (s *Syncer) evaluateInChild(ctx context.Context, commit string) (evalResponse, error) {
	req, err := json.Marshal(evalRequest{
		Repo: s.repoDir, Commit: commit, Path: s.cfg.Path,
		MemoryLimit: s.cfg.EvalMemory, CPULimit: s.cfg.EvalTimeout,
	})
	if err != nil {
		return evalResponse{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.EvalTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, s.cfg.EvalCommand[0], s.cfg.EvalCommand[1:]...)
	cmd.Env = append(cmd.Environ(), s.cfg.EvalEnv...)
	cmd.Stdin = bytes.NewReader(req)
	stdout := &limitedBuffer{max: maxEvalOutput}
	stderr := &limitedBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = time.Second
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case ctx.Err() != nil:
		return evalResponse{}, ctx.Err()
	case cctx.Err() != nil:
		return evalResponse{}, &evalCrash{fmt.Sprintf("evaluation did not finish within %v: the spec is too costly to evaluate", s.cfg.EvalTimeout)}
	case errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission):
		return evalResponse{}, fmt.Errorf("run evaluator %s: %w", s.cfg.EvalCommand[0], err)
	case err != nil:
		return evalResponse{}, &evalCrash{fmt.Sprintf("evaluation crashed after %v (%v; memory limit %d MiB): %s",
			took, err, s.cfg.EvalMemory>>20, firstLine(stderr.String()))}
	case stdout.over:
		return evalResponse{}, &evalCrash{fmt.Sprintf("evaluation wrote more than %d bytes", maxEvalOutput)}
	}
	var resp evalResponse
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return evalResponse{}, &evalCrash{fmt.Sprintf("evaluation gave no result: %v: %s", err, firstLine(stderr.String()))}
	}
	if resp.Spec != nil {
		for i := range resp.Spec.Services {
			resp.Spec.Services[i].Source = resp.Sources["service/"+resp.Spec.Services[i].Name]
		}
		for i := range resp.Spec.Jobs {
			resp.Spec.Jobs[i].Source = resp.Sources["job/"+resp.Spec.Jobs[i].Name]
		}
	}
	return resp, nil
}

// firstLine is the gist of a crash: Go prints "fatal error: ..." first,
// then the stacks.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if s == "" {
		return "no output"
	}
	return s
}

// limitedBuffer keeps the first max bytes written to it and notes more.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.over = true
		b.Buffer.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.Buffer.Write(p)
}
