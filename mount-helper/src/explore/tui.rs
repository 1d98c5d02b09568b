//! The `explore` terminal UI (ratatui on crossterm): the layer list on the left with the
//! image's efficiency under it; on the right the selected layer's changes, or the whole
//! image up to that layer, as a tree with A/C/D marks in colour; filters by change kind,
//! folding, search; the keys at the bottom. Laid out for 80x24 and up.
//!
//! The visible rows are rebuilt from flat per-node arrays whenever the selection or a
//! filter changes: passes in descending node order (children before parents, see
//! `model`) and one explicit-stack walk, never recursion.

use std::io;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::{DefaultTerminal, Frame};

use super::efficiency::Efficiency;
use super::model::{Analysis, ChangeKind, Image, Kind, NodeId, View, ROOT};
use super::report::truncate;
use crate::output::{human, short};

/// What a node is in the shown tree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    Hidden,
    /// A directory shown only because something below it is.
    Context,
    Unchanged,
    Added,
    Changed,
    Removed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Focus {
    Layers,
    Tree,
}

struct Row {
    node: NodeId,
    depth: u16,
    has_children: bool,
}

struct App<'a> {
    img: &'a Image,
    an: &'a Analysis,
    eff: &'a Efficiency,
    layer: usize,
    layer_top: usize,
    focus: Focus,
    /// The whole image up to the layer, not only its changes.
    whole: bool,
    /// Added, changed, removed, unchanged.
    show: [bool; 4],
    collapsed: Vec<bool>,
    search: String,
    typing: Option<String>,
    st: Vec<St>,
    size: Vec<u64>,
    is_dir: Vec<bool>,
    /// The layer each node is shown from (the view's, or for a removed one the view below).
    shown_from: Vec<Option<usize>>,
    rows: Vec<Row>,
    cursor: usize,
    top: usize,
}

impl<'a> App<'a> {
    fn new(img: &'a Image, an: &'a Analysis, eff: &'a Efficiency) -> App<'a> {
        let n = img.tree.len();
        let mut a = App {
            img,
            an,
            eff,
            layer: 0,
            layer_top: 0,
            focus: Focus::Layers,
            whole: false,
            show: [true; 4],
            collapsed: vec![false; n],
            search: String::new(),
            typing: None,
            st: vec![St::Hidden; n],
            size: vec![0; n],
            is_dir: vec![false; n],
            shown_from: vec![None; n],
            rows: Vec::new(),
            cursor: 0,
            top: 0,
        };
        a.rebuild();
        a
    }

    /// Recomputes every node's state for the selected layer and mode, then the rows.
    fn rebuild(&mut self) {
        let img = self.img;
        let tree = &img.tree;
        let n = tree.len();
        let below = if self.layer == 0 {
            None
        } else {
            Some(View::upto(img, self.layer - 1))
        };
        let view = View::upto(img, self.layer);
        self.st.iter_mut().for_each(|s| *s = St::Hidden);
        self.size.iter_mut().for_each(|s| *s = 0);
        for i in 0..n as NodeId {
            self.shown_from[i as usize] = view
                .layer_of(i)
                .or_else(|| below.as_ref().and_then(|b| b.layer_of(i)));
            self.is_dir[i as usize] = view.is_dir(img, i)
                || below.as_ref().is_some_and(|b| b.is_dir(img, i))
                || !tree.children(i).is_empty() && !view.present(i);
            if self.whole && i != ROOT && view.present(i) {
                self.st[i as usize] = St::Unchanged;
                self.size[i as usize] = view.size(img, i);
            }
        }
        for c in &self.an.changes[self.layer] {
            self.st[c.node as usize] = match c.kind {
                ChangeKind::Added => St::Added,
                ChangeKind::Changed => St::Changed,
                ChangeKind::Removed => St::Removed,
            };
            self.size[c.node as usize] = c.size;
            if c.kind == ChangeKind::Removed {
                // What a removal hides is listed under it, from the view below.
                if let Some(b) = &below {
                    let mut stack: Vec<NodeId> = tree.children(c.node).to_vec();
                    while let Some(k) = stack.pop() {
                        if b.present(k) {
                            self.st[k as usize] = St::Removed;
                            self.size[k as usize] = b.size(img, k);
                            stack.extend_from_slice(tree.children(k));
                        }
                    }
                }
            }
        }
        // Search: a node matches when its name or an ancestor's holds the text.
        let q = self.search.as_bytes();
        let mut matched = vec![q.is_empty(); n];
        if !q.is_empty() {
            for i in 1..n {
                let p = tree.parent(i as NodeId).unwrap_or(ROOT) as usize;
                matched[i] = (p != ROOT as usize && matched[p])
                    || tree.name(i as NodeId).windows(q.len()).any(|w| w == q);
            }
        }
        // Kept: shown for itself, or a directory above something shown. A directory that a
        // layer lists only as a parent is not news in the change view.
        let mut keep = vec![false; n];
        for i in (1..n).rev() {
            let s = self.st[i];
            let shown = match s {
                St::Added => self.show[0],
                St::Changed => self.show[1] && (!self.is_dir[i] || self.whole_dir_news(i)),
                St::Removed => self.show[2],
                St::Unchanged => self.show[3],
                _ => false,
            };
            if shown && matched[i] {
                keep[i] = true;
            }
            if keep[i] {
                let p = tree.parent(i as NodeId).unwrap_or(ROOT) as usize;
                keep[p] = true;
                if self.st[p] == St::Hidden {
                    self.st[p] = St::Context;
                }
            }
        }
        // Directory sizes, as dive shows them: what is shown below them, without what was
        // removed, unless the directory itself is removed.
        for i in (1..n).rev() {
            if !(keep[i] && self.is_dir[i]) {
                continue;
            }
            let removed = self.st[i] == St::Removed;
            let s: u64 = tree
                .children(i as NodeId)
                .iter()
                .filter(|&&c| keep[c as usize] && (removed || self.st[c as usize] != St::Removed))
                .map(|&c| self.size[c as usize])
                .sum();
            self.size[i] = self.size[i].max(s);
        }
        let cur_node = self.rows.get(self.cursor).map(|r| r.node);
        self.rows.clear();
        let mut stack: Vec<(NodeId, u16)> = tree
            .children(ROOT)
            .iter()
            .rev()
            .filter(|&&c| keep[c as usize])
            .map(|&c| (c, 0))
            .collect();
        while let Some((node, depth)) = stack.pop() {
            let kids: Vec<NodeId> = tree
                .children(node)
                .iter()
                .copied()
                .filter(|&c| keep[c as usize])
                .collect();
            self.rows.push(Row {
                node,
                depth,
                has_children: !kids.is_empty(),
            });
            if !self.collapsed[node as usize] {
                stack.extend(kids.into_iter().rev().map(|c| (c, depth.saturating_add(1))));
            }
        }
        self.cursor = cur_node
            .and_then(|n| self.rows.iter().position(|r| r.node == n))
            .unwrap_or(self.cursor.min(self.rows.len().saturating_sub(1)));
    }

    /// A changed directory is worth a row of its own when its own entry is the news
    /// (opaque: it replaced the one below) or when the whole image is shown.
    fn whole_dir_news(&self, i: usize) -> bool {
        if self.whole {
            return true;
        }
        let layer = &self.img.layers[self.layer];
        layer
            .find(i as NodeId)
            .is_some_and(|e| layer.entries[e].opaque)
    }

    fn move_cursor(&mut self, delta: isize, page: usize) {
        match self.focus {
            Focus::Layers => {
                let last = self.img.layers.len().saturating_sub(1) as isize;
                let d = if delta.abs() > 1 {
                    delta.signum() * page.min(1 << 40) as isize
                } else {
                    delta
                };
                let new = (self.layer as isize + d).clamp(0, last) as usize;
                if new != self.layer {
                    self.layer = new;
                    self.cursor = 0;
                    self.top = 0;
                    self.rows.clear();
                    self.rebuild();
                }
            }
            Focus::Tree => {
                let last = self.rows.len().saturating_sub(1) as isize;
                let d = if delta.abs() > 1 {
                    delta.signum() * page.min(1 << 40) as isize
                } else {
                    delta
                };
                self.cursor = (self.cursor as isize + d).clamp(0, last.max(0)) as usize;
            }
        }
    }

    fn fold(&mut self, open: Option<bool>) {
        let Some(r) = self.rows.get(self.cursor) else {
            return;
        };
        let (node, has) = (r.node, r.has_children);
        let c = &mut self.collapsed[node as usize];
        match open {
            Some(true) => *c = false,
            Some(false) if has && !*c => *c = true,
            Some(false) => {
                // On a leaf or a folded directory, ← goes to the parent.
                if let Some(p) = self.img.tree.parent(node) {
                    if let Some(i) = self.rows.iter().position(|r| r.node == p) {
                        self.cursor = i;
                    }
                }
                return;
            }
            None if has => *c = !*c,
            None => return,
        }
        self.rebuild();
    }

    /// Handles a key; false to quit.
    fn key(&mut self, code: KeyCode, mods: KeyModifiers, page: usize) -> bool {
        if mods.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            return false;
        }
        if let Some(t) = &mut self.typing {
            match code {
                KeyCode::Enter => {
                    self.search = std::mem::take(t);
                    self.typing = None;
                    self.cursor = 0;
                    self.rebuild();
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    t.pop();
                }
                KeyCode::Char(c) => t.push(c),
                _ => {}
            }
            return true;
        }
        match code {
            KeyCode::Char('q') => return false,
            KeyCode::Esc if !self.search.is_empty() => {
                self.search.clear();
                self.rebuild();
            }
            KeyCode::Esc => return false,
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::Layers => Focus::Tree,
                    Focus::Tree => Focus::Layers,
                }
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_cursor(-1, page),
            KeyCode::Down | KeyCode::Char('j') => self.move_cursor(1, page),
            KeyCode::PageUp => self.move_cursor(-2, page),
            KeyCode::PageDown => self.move_cursor(2, page),
            KeyCode::Home => self.move_cursor(-(1 << 40), 1 << 40),
            KeyCode::End => self.move_cursor(1 << 40, 1 << 40),
            KeyCode::Left | KeyCode::Char('h') if self.focus == Focus::Tree => {
                self.fold(Some(false))
            }
            KeyCode::Right | KeyCode::Char('l') if self.focus == Focus::Tree => {
                self.fold(Some(true))
            }
            KeyCode::Char(' ') | KeyCode::Enter if self.focus == Focus::Tree => self.fold(None),
            KeyCode::Char('m') => {
                self.whole = !self.whole;
                self.rebuild();
            }
            KeyCode::Char(c @ ('a' | 'c' | 'd' | 'u')) => {
                let i = match c {
                    'a' => 0,
                    'c' => 1,
                    'd' => 2,
                    _ => 3,
                };
                self.show[i] = !self.show[i];
                self.rebuild();
            }
            KeyCode::Char('/') => self.typing = Some(String::new()),
            KeyCode::Char('+') => {
                self.collapsed.iter_mut().for_each(|c| *c = false);
                self.rebuild();
            }
            KeyCode::Char('-') => {
                let tree = &self.img.tree;
                for (i, c) in self.collapsed.iter_mut().enumerate() {
                    *c = !tree.children(i as NodeId).is_empty();
                }
                self.rebuild();
            }
            _ => {}
        }
        true
    }

    fn draw(&mut self, f: &mut Frame) {
        let area = f.area();
        let [main, help] = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Min(5), Constraint::Length(2)])
            .areas(area);
        let [left, right] = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(42), Constraint::Percentage(58)])
            .areas(main);
        let [layers_area, details_area] = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Min(4), Constraint::Length(6)])
            .areas(left);
        self.draw_layers(f, layers_area);
        self.draw_details(f, details_area);
        self.draw_tree(f, right);
        let key = |k: &'static str, what: &'static str| {
            vec![
                Span::styled(k, Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(format!(" {what}  ")),
            ]
        };
        let mut l1 = Vec::new();
        for (k, w) in [
            ("q", "quit"),
            ("Tab", "pane"),
            ("↑↓", "move"),
            ("←→/Space", "fold"),
            ("+/-", "all"),
            ("/", "search"),
        ] {
            l1.extend(key(k, w));
        }
        let mut l2 = Vec::new();
        for (k, w) in [
            (
                "m",
                if self.whole {
                    "show layer changes"
                } else {
                    "show whole image"
                },
            ),
            ("a", "added"),
            ("c", "changed"),
            ("d", "removed"),
            ("u", "unchanged"),
        ] {
            l2.extend(key(k, w));
        }
        if let Some(t) = &self.typing {
            l2 = vec![Span::styled(
                format!("search: {t}▏ (Enter apply, Esc cancel)"),
                Style::default().fg(Color::Cyan),
            )];
        }
        f.render_widget(Paragraph::new(vec![Line::from(l1), Line::from(l2)]), help);
    }

    fn pane(&self, title: String, focused: bool) -> Block<'static> {
        let style = if focused {
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        Block::default()
            .borders(Borders::ALL)
            .title(Span::styled(title, style))
    }

    fn draw_layers(&mut self, f: &mut Frame, area: Rect) {
        let inner_h = area.height.saturating_sub(2) as usize;
        let w = area.width.saturating_sub(2) as usize;
        if self.layer < self.layer_top {
            self.layer_top = self.layer;
        }
        if inner_h > 0 && self.layer >= self.layer_top + inner_h {
            self.layer_top = self.layer + 1 - inner_h;
        }
        let lines: Vec<Line> = self
            .img
            .layers
            .iter()
            .enumerate()
            .skip(self.layer_top)
            .take(inner_h)
            .map(|(i, l)| {
                let cmd = if l.created_by.is_empty() {
                    "<no history>"
                } else {
                    &l.created_by
                };
                let sel = if i == self.layer { '>' } else { ' ' };
                let head = format!(
                    "{sel}{i:>2} {:>7} {} ",
                    human(l.size),
                    &short(&l.diff_id)[..8.min(short(&l.diff_id).len())]
                );
                let rest = truncate(cmd, w.saturating_sub(head.chars().count()));
                let text = format!("{head}{rest}");
                let style = if i == self.layer {
                    Style::default().add_modifier(Modifier::REVERSED)
                } else {
                    Style::default()
                };
                Line::styled(format!("{text:<w$}"), style)
            })
            .collect();
        let title = format!(" Layers ({}) ", self.img.layers.len());
        f.render_widget(
            Paragraph::new(lines).block(self.pane(title, self.focus == Focus::Layers)),
            area,
        );
    }

    fn draw_details(&self, f: &mut Frame, area: Rect) {
        let l = &self.img.layers[self.layer];
        let s = &self.an.summaries[self.layer];
        let w = area.width.saturating_sub(2) as usize;
        let lines = vec![
            Line::raw(truncate(
                &format!(
                    "efficiency {:.2}%  wasted {}",
                    self.eff.score * 100.0,
                    human(self.eff.wasted_bytes)
                ),
                w,
            )),
            Line::raw(truncate(
                &format!(
                    "layer {}: +{} ~{} -{}",
                    self.layer, s.added.0, s.changed.0, s.removed.0
                ),
                w,
            )),
            Line::raw(truncate(&format!("id {}", short(&l.diff_id)), w)),
            Line::raw(truncate(&l.created_by, w)),
        ];
        f.render_widget(
            Paragraph::new(lines).block(self.pane(" Image ".to_string(), false)),
            area,
        );
    }

    fn draw_tree(&mut self, f: &mut Frame, area: Rect) {
        let h = area.height.saturating_sub(2) as usize;
        let w = area.width.saturating_sub(2) as usize;
        if self.cursor < self.top {
            self.top = self.cursor;
        }
        if h > 0 && self.cursor >= self.top + h {
            self.top = self.cursor + 1 - h;
        }
        let img = self.img;
        let lines: Vec<Line> = self
            .rows
            .iter()
            .enumerate()
            .skip(self.top)
            .take(h)
            .map(|(i, r)| {
                let n = r.node as usize;
                let (mark, color) = match self.st[n] {
                    St::Added => ('A', Some(Color::Green)),
                    St::Changed => ('C', Some(Color::Yellow)),
                    St::Removed => ('D', Some(Color::Red)),
                    _ => (' ', None),
                };
                let fold = if !r.has_children {
                    "  "
                } else if self.collapsed[n] {
                    "▸ "
                } else {
                    "▾ "
                };
                let mut name = String::from_utf8_lossy(img.tree.name(r.node)).into_owned();
                if self.is_dir[n] {
                    name.push('/');
                }
                let kind_note = self.link_note(r.node);
                let indent = "  ".repeat((r.depth as usize).min(20));
                let text = format!(
                    "{mark} {:>7} {indent}{fold}{name}{kind_note}",
                    human(self.size[n])
                );
                let text = truncate(&text, w);
                let mut style = match color {
                    Some(c) => Style::default().fg(c),
                    None if self.st[n] == St::Context => Style::default().fg(Color::DarkGray),
                    None => Style::default(),
                };
                if i == self.cursor && self.focus == Focus::Tree {
                    style = style.add_modifier(Modifier::REVERSED);
                }
                Line::styled(format!("{text:<w$}"), style)
            })
            .collect();
        let filt: String = ["A", "C", "D", "U"]
            .iter()
            .zip(self.show)
            .filter(|(_, on)| *on)
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(" ");
        let mut title = if self.whole {
            format!(" Image up to layer {} [{filt}] ", self.layer)
        } else {
            format!(" Layer {} changes [{filt}] ", self.layer)
        };
        if !self.search.is_empty() {
            title.push_str(&format!("/{} ", self.search));
        }
        let body = if self.rows.is_empty() {
            vec![Line::raw("(nothing to show with these filters)")]
        } else {
            lines
        };
        f.render_widget(
            Paragraph::new(body).block(self.pane(title, self.focus == Focus::Tree)),
            area,
        );
    }

    /// ` → target` for a symlink, ` link to NAME` for a hard link, from the layer the
    /// node is shown from.
    fn link_note(&self, n: NodeId) -> String {
        let Some(l) = self.shown_from[n as usize] else {
            return String::new();
        };
        let layer = &self.img.layers[l];
        let Some(i) = layer.find(n) else {
            return String::new();
        };
        let t = layer
            .targets
            .get(&n)
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        match layer.entries[i].kind {
            Kind::Symlink => format!(" → {t}"),
            Kind::HardLink => format!(" link to /{t}"),
            _ => String::new(),
        }
    }
}

pub fn run(img: &Image, an: &Analysis, eff: &Efficiency) -> io::Result<()> {
    let mut app = App::new(img, an, eff);
    let mut term = ratatui::try_init()?;
    let res = event_loop(&mut term, &mut app);
    ratatui::restore();
    res
}

fn event_loop(term: &mut DefaultTerminal, app: &mut App) -> io::Result<()> {
    loop {
        let mut page = 10;
        term.draw(|f| {
            page = f.area().height.saturating_sub(6).max(1) as usize;
            app.draw(f)
        })?;
        if let Event::Key(k) = event::read()? {
            if k.kind == KeyEventKind::Release {
                continue;
            }
            if !app.key(k.code, k.modifiers, page) {
                return Ok(());
            }
        }
    }
}
