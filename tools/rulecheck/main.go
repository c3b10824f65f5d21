// rulecheck checks Prometheus rule files the way `promtool check rules` does, with Prometheus'
// own rulefmt package: the YAML is decoded with unknown fields refused, every expression is
// parsed by the PromQL parser, and every label and annotation template is parsed. It also
// prints the series selectors of each expression (metric name and label matchers), so that
// tests can compare them with what the operator exports.
//
// Usage:
//
//	rulecheck rules FILE...   check rule files (the `spec` of a PrometheusRule: `groups:`);
//	                          prints {"rules": N, "selectors": {"ALERT or RECORD": [selector]}}
//	rulecheck exprs           read a JSON list of PromQL expressions on stdin, parse each;
//	                          prints {"selectors": [[selectors of the 1st], [of the 2nd], ...]}
//
// A selector is {"name": "metric", "matchers": [{"label": "job", "type": "=", "value": "x"}]}
// (the name comes from an equality __name__ matcher too, else it is ""; __name__ matchers are
// not listed).
//
// Exit status: 0 when everything parses, 1 with each error on stderr, 2 on bad usage.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// The parser promtool uses without --enable-feature.
var promql = parser.NewParser(parser.Options{})

type matcher struct {
	Label string `json:"label"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

type selector struct {
	Name     string    `json:"name"`
	Matchers []matcher `json:"matchers"`
}

// selectors are the vector selectors of an expression, in the order they appear.
func selectors(expr parser.Expr) []selector {
	out := []selector{}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		s := selector{Name: vs.Name, Matchers: []matcher{}}
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel {
				if s.Name == "" && m.Type == labels.MatchEqual {
					s.Name = m.Value
				}
				continue
			}
			s.Matchers = append(s.Matchers, matcher{m.Name, m.Type.String(), m.Value})
		}
		sort.Slice(s.Matchers, func(i, j int) bool { return s.Matchers[i].Label < s.Matchers[j].Label })
		out = append(out, s)
		return nil
	})
	return out
}

func printJSON(v any) {
	out, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rulecheck:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}

func checkRules(files []string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	failed := false
	rules := 0
	found := map[string][]selector{}
	for _, file := range files {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, promql, logger)
		for _, err := range errs {
			fmt.Fprintln(os.Stderr, err)
			failed = true
		}
		if groups == nil {
			continue
		}
		for _, group := range groups.Groups {
			for _, rule := range group.Rules {
				rules++
				expr, err := promql.ParseExpr(rule.Expr)
				if err != nil {
					continue // reported by ParseFile
				}
				name := rule.Alert
				if name == "" {
					name = rule.Record
				}
				found[name] = selectors(expr)
			}
		}
	}
	if failed {
		return 1
	}
	printJSON(map[string]any{"rules": rules, "selectors": found})
	return 0
}

func checkExprs(stdin io.Reader) int {
	var exprs []string
	if err := json.NewDecoder(stdin).Decode(&exprs); err != nil {
		fmt.Fprintln(os.Stderr, "rulecheck exprs: stdin is not a JSON list of strings:", err)
		return 2
	}
	failed := false
	found := make([][]selector, len(exprs))
	for i, text := range exprs {
		expr, err := promql.ParseExpr(text)
		if err != nil {
			fmt.Fprintf(os.Stderr, "expression %d %q: %v\n", i, text, err)
			failed = true
			continue
		}
		found[i] = selectors(expr)
	}
	if failed {
		return 1
	}
	printJSON(map[string]any{"selectors": found})
	return 0
}

func main() {
	switch {
	case len(os.Args) >= 3 && os.Args[1] == "rules":
		os.Exit(checkRules(os.Args[2:]))
	case len(os.Args) == 2 && os.Args[1] == "exprs":
		os.Exit(checkExprs(os.Stdin))
	default:
		fmt.Fprintln(os.Stderr, "usage: rulecheck rules FILE... | rulecheck exprs < exprs.json")
		os.Exit(2)
	}
}
