//! Content models: `sequence` / `choice` particles compiled into an NFA whose transitions are element
//! declarations (occurrence bounds unrolled), and `all` groups checked with a set of seen members.

/// Index of an element declaration in the schema's arena.
pub type ElemId = usize;

/// A particle as written in the schema.
#[derive(Debug, Clone)]
pub enum Particle {
    Element {
        decl: ElemId,
        min: u32,
        max: Option<u32>,
    },
    Sequence {
        items: Vec<Particle>,
        min: u32,
        max: Option<u32>,
    },
    Choice {
        items: Vec<Particle>,
        min: u32,
        max: Option<u32>,
    },
}

impl Particle {
    fn bounds(&self) -> (u32, Option<u32>) {
        match self {
            Particle::Element { min, max, .. }
            | Particle::Sequence { min, max, .. }
            | Particle::Choice { min, max, .. } => (*min, *max),
        }
    }
}

/// NFA states; `closure[s]` is every state reachable from `s` by ε-moves (s included), sorted.
#[derive(Debug, Clone)]
pub struct Nfa {
    pub trans: Vec<Vec<(ElemId, usize)>>,
    eps: Vec<Vec<usize>>,
    pub closure: Vec<Vec<usize>>,
    pub start: usize,
    pub accept: usize,
}

/// Most states one content model may unroll into (bounded `maxOccurs` are unrolled).
pub const MAX_STATES: usize = 20_000;

struct Builder {
    trans: Vec<Vec<(ElemId, usize)>>,
    eps: Vec<Vec<usize>>,
}

impl Builder {
    fn state(&mut self) -> Result<usize, String> {
        if self.trans.len() >= MAX_STATES {
            return Err(format!(
                "the content model unrolls into more than {MAX_STATES} states; lower maxOccurs or use unbounded"
            ));
        }
        self.trans.push(Vec::new());
        self.eps.push(Vec::new());
        Ok(self.trans.len() - 1)
    }

    /// Builds one occurrence of `p` (ignoring its own bounds) between fresh states.
    fn once(&mut self, p: &Particle) -> Result<(usize, usize), String> {
        let (s, t) = (self.state()?, self.state()?);
        match p {
            Particle::Element { decl, .. } => self.trans[s].push((*decl, t)),
            Particle::Sequence { items, .. } => {
                let mut cur = s;
                for item in items {
                    let (a, b) = self.occurs(item)?;
                    self.eps[cur].push(a);
                    cur = b;
                }
                self.eps[cur].push(t);
            }
            Particle::Choice { items, .. } => {
                for item in items {
                    let (a, b) = self.occurs(item)?;
                    self.eps[s].push(a);
                    self.eps[b].push(t);
                }
            }
        }
        Ok((s, t))
    }

    /// Builds `p` with its bounds: `min` mandatory copies, then optional copies or a loop.
    fn occurs(&mut self, p: &Particle) -> Result<(usize, usize), String> {
        let (min, max) = p.bounds();
        let start = self.state()?;
        let mut cur = start;
        for _ in 0..min {
            let (a, b) = self.once(p)?;
            self.eps[cur].push(a);
            cur = b;
        }
        let end = self.state()?;
        match max {
            None => {
                let (a, b) = self.once(p)?;
                self.eps[cur].push(a);
                self.eps[b].push(a);
                self.eps[b].push(end);
                self.eps[cur].push(end);
            }
            Some(max) => {
                for _ in min..max {
                    let (a, b) = self.once(p)?;
                    self.eps[cur].push(a);
                    self.eps[cur].push(end);
                    cur = b;
                }
                self.eps[cur].push(end);
            }
        }
        Ok((start, end))
    }
}

impl Nfa {
    pub fn compile(root: &Particle) -> Result<Nfa, String> {
        let mut b = Builder {
            trans: Vec::new(),
            eps: Vec::new(),
        };
        let (start, accept) = b.occurs(root)?;
        let n = b.trans.len();
        let mut closure = Vec::with_capacity(n);
        for s in 0..n {
            let mut seen = vec![false; n];
            let mut stack = vec![s];
            let mut out = Vec::new();
            while let Some(x) = stack.pop() {
                if std::mem::replace(&mut seen[x], true) {
                    continue;
                }
                out.push(x);
                stack.extend(b.eps[x].iter().copied());
            }
            out.sort_unstable();
            closure.push(out);
        }
        Ok(Nfa {
            trans: b.trans,
            eps: b.eps,
            closure,
            start,
            accept,
        })
    }

    /// The states the model starts in.
    pub fn initial(&self) -> Vec<usize> {
        self.closure[self.start].clone()
    }

    /// States after reading `decl`'s element, given a predicate telling which declarations match it.
    pub fn step(
        &self,
        states: &[usize],
        matches: impl Fn(ElemId) -> bool,
    ) -> (Vec<usize>, Option<ElemId>) {
        let mut next = Vec::new();
        let matched = self.step_into(states, matches, &mut next);
        (next, matched)
    }

    /// As [`Nfa::step`], into a buffer the caller reuses (no allocation per element once it has grown).
    pub fn step_into(
        &self,
        states: &[usize],
        matches: impl Fn(ElemId) -> bool,
        next: &mut Vec<usize>,
    ) -> Option<ElemId> {
        next.clear();
        let mut matched = None;
        for &s in states {
            for &(decl, t) in &self.trans[s] {
                if matches(decl) {
                    matched.get_or_insert(decl);
                    next.extend_from_slice(&self.closure[t]);
                }
            }
        }
        next.sort_unstable();
        next.dedup();
        matched
    }

    pub fn accepts(&self, states: &[usize]) -> bool {
        states.binary_search(&self.accept).is_ok()
    }

    /// Declarations that may come next.
    pub fn expected(&self, states: &[usize]) -> Vec<ElemId> {
        let mut out: Vec<ElemId> = states
            .iter()
            .flat_map(|s| self.trans[*s].iter().map(|(d, _)| *d))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// After a missing element: the states reached by skipping what is missing and reading the element that
    /// came, so validation goes on with one error instead of a cascade.
    pub fn recover(
        &self,
        states: &[usize],
        matches: impl Fn(ElemId) -> bool,
    ) -> (Vec<usize>, Option<ElemId>) {
        let mut seen = vec![false; self.trans.len()];
        let mut stack: Vec<usize> = states.to_vec();
        let mut found = Vec::new();
        while let Some(s) = stack.pop() {
            if std::mem::replace(&mut seen[s], true) {
                continue;
            }
            for &(decl, t) in &self.trans[s] {
                if matches(decl) {
                    found.push(s);
                } else {
                    stack.push(t);
                }
            }
            stack.extend(self.eps[s].iter().copied());
        }
        found.sort_unstable();
        found.dedup();
        self.step(&found, matches)
    }

    /// Whether some declaration matching `matches` can still come later (after something required first).
    pub fn reachable_later(&self, states: &[usize], matches: impl Fn(ElemId) -> bool) -> bool {
        let mut seen = vec![false; self.trans.len()];
        let mut stack: Vec<usize> = states.to_vec();
        while let Some(s) = stack.pop() {
            if std::mem::replace(&mut seen[s], true) {
                continue;
            }
            for &(decl, t) in &self.trans[s] {
                if matches(decl) {
                    return true;
                }
                stack.push(t);
            }
            stack.extend(self.eps[s].iter().copied());
        }
        false
    }
}

/// The NFA made deterministic (subset construction at load): one state per element frame, one scan of a few
/// transitions per child. XSD's unique-particle-attribution rule keeps these small.
#[derive(Debug, Clone)]
pub struct Dfa {
    pub states: Vec<DState>,
}

#[derive(Debug, Clone)]
pub struct DState {
    pub trans: Vec<(ElemId, usize)>,
    pub accept: bool,
    /// The NFA states this state stands for (error messages and recovery work on the NFA).
    pub set: Vec<usize>,
}

/// Most DFA states one content model may have.
pub const MAX_DFA_STATES: usize = 4096;

impl Dfa {
    pub fn build(nfa: &Nfa) -> Result<Dfa, String> {
        let mut index: std::collections::HashMap<Vec<usize>, usize> =
            std::collections::HashMap::new();
        let start = nfa.initial();
        index.insert(start.clone(), 0);
        let mut states = vec![DState {
            trans: Vec::new(),
            accept: nfa.accepts(&start),
            set: start,
        }];
        let mut i = 0;
        while i < states.len() {
            let mut by_decl: Vec<(ElemId, Vec<usize>)> = Vec::new();
            for &s in &states[i].set {
                for &(d, t) in &nfa.trans[s] {
                    match by_decl.iter_mut().find(|(x, _)| *x == d) {
                        Some((_, next)) => next.extend_from_slice(&nfa.closure[t]),
                        None => by_decl.push((d, nfa.closure[t].clone())),
                    }
                }
            }
            for (d, mut next) in by_decl {
                next.sort_unstable();
                next.dedup();
                let id = match index.get(&next) {
                    Some(id) => *id,
                    None => {
                        if states.len() >= MAX_DFA_STATES {
                            return Err(format!(
                                "the content model needs more than {MAX_DFA_STATES} states; simplify its occurrence bounds"
                            ));
                        }
                        let id = states.len();
                        index.insert(next.clone(), id);
                        states.push(DState {
                            trans: Vec::new(),
                            accept: nfa.accepts(&next),
                            set: next,
                        });
                        id
                    }
                };
                states[i].trans.push((d, id));
            }
            i += 1;
        }
        Ok(Dfa { states })
    }
}

/// A sequence/choice content model: the NFA (for messages and recovery) and its DFA (for the common path).
#[derive(Debug, Clone)]
pub struct Model {
    pub nfa: Nfa,
    pub dfa: Dfa,
}

impl Model {
    pub fn compile(root: &Particle) -> Result<Model, String> {
        let nfa = Nfa::compile(root)?;
        let dfa = Dfa::build(&nfa)?;
        Ok(Model { nfa, dfa })
    }
}

/// An `all` group: each member at most once, in any order; required members must all appear.
#[derive(Debug, Clone)]
pub struct AllGroup {
    pub members: Vec<(ElemId, bool)>,
    /// `minOccurs="0"` on the group itself: an empty content is fine.
    pub optional: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(decl: ElemId, min: u32, max: Option<u32>) -> Particle {
        Particle::Element { decl, min, max }
    }

    fn run(nfa: &Nfa, input: &[ElemId]) -> bool {
        let mut states = nfa.initial();
        for d in input {
            states = nfa.step(&states, |x| x == *d).0;
            if states.is_empty() {
                return false;
            }
        }
        nfa.accepts(&states)
    }

    #[test]
    fn sequence_with_bounds_and_choice() {
        // a, b{0,2}, (c | d), e*
        let p = Particle::Sequence {
            items: vec![
                el(0, 1, Some(1)),
                el(1, 0, Some(2)),
                Particle::Choice {
                    items: vec![el(2, 1, Some(1)), el(3, 1, Some(1))],
                    min: 1,
                    max: Some(1),
                },
                el(4, 0, None),
            ],
            min: 1,
            max: Some(1),
        };
        let nfa = Nfa::compile(&p).unwrap();
        assert!(run(&nfa, &[0, 2]));
        assert!(run(&nfa, &[0, 1, 1, 3, 4, 4, 4]));
        assert!(!run(&nfa, &[0, 1, 1, 1, 2]));
        assert!(!run(&nfa, &[0, 2, 3]));
        assert!(!run(&nfa, &[0]));
        let after_a = nfa.step(&nfa.initial(), |x| x == 0).0;
        assert_eq!(nfa.expected(&after_a), vec![1, 2, 3]);
        assert!(nfa.reachable_later(&nfa.initial(), |x| x == 4));
    }

    #[test]
    fn the_dfa_accepts_what_the_nfa_accepts() {
        let p = Particle::Sequence {
            items: vec![
                el(0, 1, Some(1)),
                el(1, 0, Some(3)),
                Particle::Choice {
                    items: vec![el(2, 1, Some(1)), el(3, 1, None)],
                    min: 1,
                    max: Some(1),
                },
            ],
            min: 1,
            max: Some(1),
        };
        let m = Model::compile(&p).unwrap();
        let run_dfa = |input: &[ElemId]| {
            let mut s = 0;
            for d in input {
                match m.dfa.states[s].trans.iter().find(|(x, _)| x == d) {
                    Some((_, t)) => s = *t,
                    None => return false,
                }
            }
            m.dfa.states[s].accept
        };
        for input in [
            &[0, 2][..],
            &[0, 1, 1, 1, 3, 3],
            &[0, 1, 1, 1, 1, 2],
            &[0],
            &[1, 2],
            &[0, 3, 2],
        ] {
            assert_eq!(run_dfa(input), run(&m.nfa, input), "{input:?}");
        }
    }

    #[test]
    fn huge_bounded_max_is_refused_not_unrolled_forever() {
        let p = Particle::Sequence {
            items: vec![el(0, 0, Some(1_000_000))],
            min: 1,
            max: Some(1),
        };
        assert!(Nfa::compile(&p).unwrap_err().contains("states"));
    }
}
