//! What an engineer watches while tracing: a live view on a terminal (ratatui over crossterm),
//! refreshed from a [`Report`] every interval, or one summary line per interval when there is
//! no terminal. Rendering is pure (a `Report` and the view's state in, cells out) and tested on
//! ratatui's TestBackend; only [`LiveView`] touches the terminal, from a thread of its own so
//! keys are answered at once whatever the tracer is doing.
use std::{
    io::{self, IsTerminal as _, Write},
    sync::{
        Arc,
        mpsc::{self, Receiver, Sender, TryRecvError},
    },
    thread::JoinHandle,
    time::Duration,
};

use ratatui::{
    Frame, Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute, terminal,
    },
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, TableState},
};
use tokio::sync::Notify;

use crate::{
    model::{
        fd::{CloseReason, SiteId},
        frame::{FrameDisplay, shown},
    },
    output::{
        format::{bytes, human_duration, plural, rate, thousands},
        report::{ProcessReport, Report, SiteReport, text::not_judged},
    },
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    #[default]
    Sites,
    Processes,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SortBy {
    #[default]
    Open,
    Growth,
}

/// Lines of the selected site's stack shown under it, innermost first.
const MAX_FRAME_LINES: usize = 6;

/// The view's state: what the keys change.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ui {
    pub(crate) mode: Mode,
    pub(crate) sort: SortBy,
    pub(crate) paused: bool,
    pub(crate) selected: usize,
    /// Which frames of the selected site are shown (`--all-frames`).
    pub(crate) frames: FrameDisplay,
}

/// What a key means here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Quit,
    Pause,
    SwitchView,
    Sort,
    Up,
    Down,
    Other,
}

impl Key {
    pub(crate) fn from_event(key: KeyEvent) -> Key {
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => Key::Quit,
            KeyCode::Char('p' | 'P' | ' ') => Key::Pause,
            KeyCode::Char('v' | 'V') | KeyCode::Tab => Key::SwitchView,
            KeyCode::Char('s' | 'S') => Key::Sort,
            KeyCode::Up | KeyCode::Char('k') => Key::Up,
            KeyCode::Down | KeyCode::Char('j') => Key::Down,
            _ => Key::Other,
        }
    }
}

impl Ui {
    /// Apply a key; true when it asks to quit.
    pub(crate) fn handle(&mut self, key: Key) -> bool {
        match key {
            Key::Quit => return true,
            Key::Pause => self.paused = !self.paused,
            Key::SwitchView => {
                self.mode = match self.mode {
                    Mode::Sites => Mode::Processes,
                    Mode::Processes => Mode::Sites,
                };
                self.selected = 0;
            }
            Key::Sort => {
                self.sort = match self.sort {
                    SortBy::Open => SortBy::Growth,
                    SortBy::Growth => SortBy::Open,
                }
            }
            Key::Up => self.selected = self.selected.saturating_sub(1),
            Key::Down => self.selected += 1,
            Key::Other => {}
        }
        false
    }
}

/// Call sites of every process, suspected leaks first, then by the chosen order. Descriptors
/// open before tracing are not a call site and are left out.
pub(crate) fn site_rows(report: &Report, sort: SortBy) -> Vec<(&ProcessReport, &SiteReport)> {
    let mut rows: Vec<(&ProcessReport, &SiteReport)> = report
        .processes
        .iter()
        .flat_map(|p| p.sites.iter().map(move |s| (p, s)))
        .filter(|(_, s)| s.site != SiteId::BeforeTrace.label())
        .collect();
    let growth = |s: &SiteReport| s.growth_per_minute.unwrap_or(0.0);
    rows.sort_by(|(pa, a), (pb, b)| {
        let by = match sort {
            SortBy::Open => b.open.cmp(&a.open).then(growth(b).total_cmp(&growth(a))),
            SortBy::Growth => growth(b).total_cmp(&growth(a)).then(b.open.cmp(&a.open)),
        };
        b.suspected_leak.cmp(&a.suspected_leak).then(by).then(pa.pid.cmp(&pb.pid))
    });
    rows
}

pub(crate) fn process_rows(report: &Report, sort: SortBy) -> Vec<&ProcessReport> {
    let mut rows: Vec<&ProcessReport> = report.processes.iter().collect();
    rows.sort_by(|a, b| {
        let by = match sort {
            SortBy::Open => {
                b.open_fds.cmp(&a.open_fds).then(b.growth_per_minute.total_cmp(&a.growth_per_minute))
            }
            SortBy::Growth => {
                b.growth_per_minute.total_cmp(&a.growth_per_minute).then(b.open_fds.cmp(&a.open_fds))
            }
        };
        b.suspected_leaks.cmp(&a.suspected_leaks).then(by).then(a.pid.cmp(&b.pid))
    });
    rows
}

/// "close 9, exit 3" in few characters.
fn closes(site: &SiteReport) -> String {
    site.closed_by
        .iter()
        .map(|(reason, n)| {
            let name = match reason {
                CloseReason::Close => "close",
                CloseReason::CloseRange => "range",
                CloseReason::Replaced => "dup2",
                CloseReason::Exec => "exec",
                CloseReason::Exit => "exit",
                CloseReason::Reconcile => "fix",
            };
            format!("{name} {}", thousands(*n))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn flags(site: &SiteReport) -> String {
    let mut flags = Vec::new();
    if site.suspected_leak {
        flags.push("LEAK?".to_string());
    }
    if site.close_wait > 0 {
        flags.push("CLOSE_WAIT".to_string());
    }
    if site.closed_only_at_exit {
        flags.push("exit-only".to_string());
    }
    flags.join(" ")
}

fn growth(g: Option<f64>) -> String {
    g.map(rate).unwrap_or_else(|| "-".to_string())
}

/// One line of the whole picture, for logs and pipes.
pub(crate) fn summary_line(report: &Report) -> String {
    let open: u64 = report.processes.iter().map(|p| p.open_fds).sum();
    let mut line = format!(
        "helios-trace {}: {}, {} open, {} events ({} lost)",
        human_duration(report.duration_seconds),
        plural(report.processes.len() as u64, "process", "processes"),
        thousands(open),
        thousands(report.events.received),
        thousands(report.events.lost),
    );
    let rows = site_rows(report, SortBy::Open);
    match (report.suspected_leaks, rows.first()) {
        (0, None) if !report.judged => line.push_str(&format!("; {}", not_judged(report))),
        (0, None) => line.push_str("; no suspected leak"),
        (0, Some((p, s))) => line.push_str(&format!(
            "; {}; most open: pid {} {} {} {} at {} ({})",
            if report.judged { "no suspected leak".to_string() } else { not_judged(report) },
            p.pid,
            p.comm,
            thousands(s.open),
            s.kind,
            s.frame,
            growth(s.growth_per_minute)
        )),
        (n, Some((p, s))) => line.push_str(&format!(
            "; {n} suspected leak{}: pid {} {} {} {} open at {} ({})",
            if n == 1 { "" } else { "s" },
            p.pid,
            p.comm,
            thousands(s.open),
            s.kind,
            s.frame,
            growth(s.growth_per_minute)
        )),
        (_, None) => {}
    }
    line
}

const HEADER_STYLE: Style = Style::new().add_modifier(Modifier::BOLD).add_modifier(Modifier::REVERSED);

/// Draw the whole screen. `title` says what is traced.
pub(crate) fn render(frame: &mut Frame, ui: &mut Ui, report: Option<&Report>, title: &str) {
    let [head, body, detail, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(4),
        Constraint::Length(10),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let Some(report) = report else {
        frame.render_widget(
            Paragraph::new(format!("helios-trace: {title}: waiting for the first sample…")),
            head,
        );
        return;
    };
    let open: u64 = report.processes.iter().map(|p| p.open_fds).sum();
    let mut status = vec![
        Span::styled("helios-trace ", Style::new().bold()),
        Span::raw(format!(
            "{title} | {} | {} events ({} lost) | {}, {} open | ",
            human_duration(report.duration_seconds),
            thousands(report.events.received),
            thousands(report.events.lost),
            plural(report.processes.len() as u64, "process", "processes"),
            thousands(open),
        )),
        match report.suspected_leaks {
            0 => Span::raw("no suspected leak"),
            n => Span::styled(
                format!("{n} suspected leak{}", if n == 1 { "" } else { "s" }),
                Style::new().fg(Color::Red).bold(),
            ),
        },
    ];
    if ui.paused {
        status.push(Span::styled("  [PAUSED]", Style::new().fg(Color::Yellow).bold()));
    }
    let view = match (ui.mode, ui.sort) {
        (Mode::Sites, SortBy::Open) => "call sites by open descriptors",
        (Mode::Sites, SortBy::Growth) => "call sites by growth",
        (Mode::Processes, SortBy::Open) => "processes by open descriptors",
        (Mode::Processes, SortBy::Growth) => "processes by growth",
    };
    frame.render_widget(
        Paragraph::new(vec![Line::from(status), Line::from(format!("{view}, suspected leaks first"))]),
        head,
    );
    let details = match ui.mode {
        Mode::Sites => {
            let rows = site_rows(report, ui.sort);
            ui.selected = ui.selected.min(rows.len().saturating_sub(1));
            render_sites(frame, body, &rows, ui.selected);
            rows.get(ui.selected).map(|(p, s)| site_details(p, s, ui.frames)).unwrap_or_default()
        }
        Mode::Processes => {
            let rows = process_rows(report, ui.sort);
            ui.selected = ui.selected.min(rows.len().saturating_sub(1));
            render_processes(frame, body, &rows, ui.sort, ui.selected);
            rows.get(ui.selected).map(|p| process_details(p)).unwrap_or_default()
        }
    };
    frame.render_widget(Paragraph::new(details).block(Block::bordered().title(" selected ")), detail);
    frame.render_widget(
        Paragraph::new("q quit   p pause   v processes/sites   s sort by open/growth   ↑↓ select")
            .style(Style::new().add_modifier(Modifier::REVERSED)),
        foot,
    );
}

fn render_sites(
    frame: &mut Frame,
    area: ratatui::layout::Rect,
    rows: &[(&ProcessReport, &SiteReport)],
    selected: usize,
) {
    let header = Row::new([
        "PID",
        "COMM",
        "KIND",
        "OPEN",
        "OLDEST",
        "GROWTH",
        "MEM",
        "CLOSED BY",
        "CW",
        "FLAGS",
        "FRAME",
    ])
    .style(HEADER_STYLE);
    let table_rows = rows.iter().map(|(p, s)| {
        let style = if s.suspected_leak { Style::new().fg(Color::Red) } else { Style::new() };
        Row::new([
            Cell::from(p.pid.to_string()),
            Cell::from(p.comm.clone()),
            Cell::from(s.kind.as_str()),
            Cell::from(thousands(s.open)),
            Cell::from(s.oldest_age_seconds.map(human_duration).unwrap_or_default()),
            Cell::from(growth(s.growth_per_minute)),
            Cell::from(memory(s)),
            Cell::from(closes(s)),
            Cell::from(if s.close_wait > 0 { thousands(s.close_wait) } else { String::new() }),
            Cell::from(flags(s)),
            Cell::from(s.frame.clone()),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(7),
        Constraint::Length(15),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(22),
        Constraint::Length(6),
        Constraint::Length(21),
        Constraint::Fill(1),
    ];
    let table = Table::new(table_rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, area, &mut TableState::default().with_selected(Some(selected)));
}

fn render_processes(
    frame: &mut Frame,
    area: ratatui::layout::Rect,
    rows: &[&ProcessReport],
    sort: SortBy,
    selected: usize,
) {
    let header = Row::new(["PID", "COMM", "OPEN", "GROWTH", "LEAKS", "CW", "RSS", "FD LIMIT IN", "TOP SITE"])
        .style(HEADER_STYLE);
    let table_rows = rows.iter().map(|p| {
        let style = if p.suspected_leaks > 0 { Style::new().fg(Color::Red) } else { Style::new() };
        let top = top_site(p, sort).map(|s| format!("{} {} at {}", thousands(s.open), s.kind, s.frame));
        Row::new([
            Cell::from(p.pid.to_string()),
            Cell::from(p.comm.clone()),
            Cell::from(thousands(p.open_fds)),
            Cell::from(rate(p.growth_per_minute)),
            Cell::from(if p.suspected_leaks > 0 { p.suspected_leaks.to_string() } else { String::new() }),
            Cell::from(match p.sites.iter().map(|s| s.close_wait).sum::<u64>() {
                0 => String::new(),
                n => thousands(n),
            }),
            Cell::from(
                p.resources.as_ref().and_then(|r| r.rss_bytes).map(|b| bytes(b as f64)).unwrap_or_default(),
            ),
            Cell::from(
                p.resources
                    .as_ref()
                    .and_then(|r| r.fd_exhaustion_seconds)
                    .map(human_duration)
                    .unwrap_or_default(),
            ),
            Cell::from(top.unwrap_or_default()),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(7),
        Constraint::Length(15),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(12),
        Constraint::Fill(1),
    ];
    let table = Table::new(table_rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, area, &mut TableState::default().with_selected(Some(selected)));
}

/// The kernel memory a site's descriptors hold (sockets' buffers, memfds' pages).
fn memory(site: &SiteReport) -> String {
    match site.socket_memory_bytes.or(site.pinned_bytes) {
        Some(b) if b > 0 => bytes(b as f64),
        _ => String::new(),
    }
}

fn top_site(process: &ProcessReport, sort: SortBy) -> Option<&SiteReport> {
    let growth = |s: &SiteReport| s.growth_per_minute.unwrap_or(0.0);
    process.sites.iter().filter(|s| s.site != SiteId::BeforeTrace.label()).max_by(|a, b| {
        let by = match sort {
            SortBy::Open => a.open.cmp(&b.open).then(growth(a).total_cmp(&growth(b))),
            SortBy::Growth => growth(a).total_cmp(&growth(b)).then(a.open.cmp(&b.open)),
        };
        a.suspected_leak.cmp(&b.suspected_leak).then(by)
    })
}

/// Holder lines shown under the selected site (the report has them all).
const MAX_HOLDER_LINES: usize = 3;

/// The selected site: its counts and flags, then the innermost lines of its stack (a Python
/// stack's interpreter frames folded unless `--all-frames`).
fn site_details(process: &ProcessReport, site: &SiteReport, frames: FrameDisplay) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(format!(
        "pid {} {}: {} site {}, {} open, opened {} closed {}",
        process.pid,
        process.comm,
        site.kind,
        site.site,
        thousands(site.open),
        thousands(site.opened),
        thousands(site.closed)
    ))];
    if let Some(why) = &site.why {
        lines.push(Line::from(Span::styled(format!("suspected leak: {why}"), Style::new().fg(Color::Red))));
    }
    if site.close_wait > 0 {
        lines.push(Line::from(format!(
            "{} sockets in CLOSE_WAIT: the peer hung up and they were never closed",
            thousands(site.close_wait)
        )));
    }
    if site.closed_only_at_exit {
        lines.push(Line::from("its descriptors are only ever closed by process exit"));
    }
    if let Some(memory) = site.socket_memory_bytes.filter(|m| *m > 0) {
        lines.push(Line::from(format!("its open sockets hold {} of kernel memory", bytes(memory as f64))));
    }
    // Who keeps them open (ARCHITECTURE.md, "Holders"), before the stack: the widest chains.
    let holders = site.holders.as_deref().unwrap_or_default();
    for holder in holders.iter().take(MAX_HOLDER_LINES) {
        lines.push(Line::from(Span::styled(
            format!("holders: {}", holder.line()),
            Style::new().fg(Color::Yellow),
        )));
    }
    if holders.len() > MAX_HOLDER_LINES {
        lines.push(Line::from(format!(
            "holders: {} more lines in the report",
            holders.len() - MAX_HOLDER_LINES
        )));
    }
    lines.extend(shown(&site.frames, frames).iter().take(MAX_FRAME_LINES).map(|s| Line::from(s.line())));
    lines
}

fn process_details(process: &ProcessReport) -> Vec<Line<'static>> {
    let kinds: Vec<String> = process.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let mut lines = vec![
        Line::from(format!(
            "pid {} {}{}",
            process.pid,
            process.comm,
            process.cmdline.as_ref().map(|c| format!(" [{c}]")).unwrap_or_default()
        )),
        Line::from(format!("{} open: {}", thousands(process.open_fds), kinds.join(", "))),
    ];
    if let Some(summary) = process.resources.as_ref().and_then(|r| r.summary.clone()) {
        lines.push(Line::from(summary));
    }
    for site in process.sites.iter().filter(|s| s.suspected_leak) {
        lines.push(Line::from(format!(
            "suspected leak at {}: {}",
            site.frame,
            site.why.as_deref().unwrap_or_default()
        )));
    }
    lines
}

/// Where the view is drawn: stdout when it is a terminal, else stderr.
fn terminal_output() -> Option<(Box<dyn Write + Send>, bool)> {
    if io::stdout().is_terminal() {
        Some((Box::new(io::stdout()), true))
    } else if io::stderr().is_terminal() {
        Some((Box::new(io::stderr()), false))
    } else {
        None
    }
}

/// Whether a live view can be drawn here.
pub(crate) fn has_terminal() -> bool {
    io::stdout().is_terminal() || io::stderr().is_terminal()
}

/// The live view, drawn by a thread of its own until `finish`.
pub(crate) struct LiveView {
    reports: Option<Sender<Report>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Drawn on stdout (so the report must wait for the terminal to be restored).
    on_stdout: bool,
}

impl LiveView {
    /// Drawn on stdout: the report must wait for the terminal to be restored.
    pub(crate) fn on_stdout(&self) -> bool {
        self.on_stdout
    }

    /// Take over the terminal; `quit` is notified when a quit key is pressed.
    pub(crate) fn start(title: String, frames: FrameDisplay, quit: Arc<Notify>) -> io::Result<LiveView> {
        let (mut out, on_stdout) =
            terminal_output().ok_or_else(|| io::Error::other("the live view needs a terminal"))?;
        enter(&mut out)?;
        restore_on_panic(on_stdout);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("live-view".into()).spawn(move || {
            let result = draw_loop(out, &title, frames, &rx, &quit);
            leave(on_stdout);
            result
        })?;
        Ok(LiveView { reports: Some(tx), thread: Some(thread), on_stdout })
    }

    pub(crate) fn show(&self, report: Report) {
        if let Some(tx) = &self.reports {
            let _ = tx.send(report);
        }
    }

    /// Stop drawing and give the terminal back as it was.
    pub(crate) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.reports = None;
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Err(e)) => log::warn!("live view: {e}"),
                Err(_) => log::warn!("live view: the drawing thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.stop();
    }
}

fn enter(out: &mut impl Write) -> io::Result<()> {
    terminal::enable_raw_mode()?;
    execute!(out, terminal::EnterAlternateScreen, terminal::Clear(terminal::ClearType::All), cursor::Hide)
}

fn leave(on_stdout: bool) {
    let _ = terminal::disable_raw_mode();
    let _ = if on_stdout {
        execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show)
    } else {
        execute!(io::stderr(), terminal::LeaveAlternateScreen, cursor::Show)
    };
}

/// A panic must not leave the terminal in raw mode on the alternate screen.
fn restore_on_panic(on_stdout: bool) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        leave(on_stdout);
        previous(info);
    }));
}

fn draw_loop(
    out: Box<dyn Write + Send>,
    title: &str,
    frames: FrameDisplay,
    reports: &Receiver<Report>,
    quit: &Notify,
) -> io::Result<()> {
    // No Terminal::clear (here or on resize): it asks the cursor position on stdout, which may
    // not be the terminal we draw on. `enter` cleared the screen.
    let mut terminal = Terminal::new(CrosstermBackend::new(out))?;
    let mut ui = Ui { frames, ..Ui::default() };
    let (mut shown, mut latest): (Option<Report>, Option<Report>) = (None, None);
    let mut dirty = true;
    loop {
        loop {
            match reports.try_recv() {
                Ok(report) => latest = Some(report),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        if !ui.paused && latest.is_some() {
            shown = latest.take();
            dirty = true;
        }
        if dirty {
            terminal.draw(|frame| render(frame, &mut ui, shown.as_ref(), title))?;
            dirty = false;
        }
        if event::poll(Duration::from_millis(100))? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    if ui.handle(Key::from_event(key)) {
                        quit.notify_one();
                    }
                    dirty = true;
                }
                Event::Resize(..) => {
                    terminal.autoresize()?;
                    dirty = true;
                }
                _ => {}
            }
        }
    }
}

/// Report builders shared with the other outputs' tests (flamegraph.rs).
#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use ratatui::backend::TestBackend;

    use super::*;
    use crate::model::{counts::EventCounts, fd::FdKind, fdtable::Corrections, frame::SiteOrigin};

    pub(crate) fn site(
        id: &str,
        kind: FdKind,
        open: u64,
        growth: Option<f64>,
        suspected: bool,
    ) -> SiteReport {
        SiteReport {
            site: id.to_string(),
            kind,
            frame: format!("frame-of-{id}"),
            open,
            opened: open + 100,
            closed: 100,
            oldest_age_seconds: Some(42.0),
            closed_by: BTreeMap::from([(CloseReason::Close, 100)]),
            closed_only_at_exit: false,
            exited_processes: None,
            growth_per_minute: growth,
            suspected_leak: suspected,
            why: suspected.then(|| "+60/min for 1m 0s; none of the 60 opened since then closed".to_string()),
            trend: None,
            tcp_states: BTreeMap::new(),
            close_wait: 0,
            socket_memory_bytes: (kind == FdKind::Socket).then_some(open * 100_000),
            socket_memory_unavailable: None,
            unmeasured_sockets: 0,
            pinned_bytes: None,
            frames: Vec::new(),
            origin: SiteOrigin::default(),
            examples: Vec::new(),
            holders: None,
        }
    }

    pub(crate) fn process(pid: u32, comm: &str, sites: Vec<SiteReport>) -> ProcessReport {
        ProcessReport {
            pid,
            comm: comm.to_string(),
            cmdline: None,
            facts_before_exit_seconds: None,
            open_fds: sites.iter().map(|s| s.open).sum(),
            by_kind: BTreeMap::new(),
            exited: false,
            suspected_leaks: sites.iter().filter(|s| s.suspected_leak).count() as u64,
            growth_per_minute: sites.iter().filter_map(|s| s.growth_per_minute).sum(),
            resources: Some(crate::output::report::Resources {
                rss_bytes: Some(240_000_000),
                fd_exhaustion_seconds: (pid == 20).then_some(33_120.0),
                ..Default::default()
            }),
            sites,
            heap: None,
            fds: None,
        }
    }

    fn sample() -> Report {
        let mut cw = site("c105e", FdKind::Socket, 40, Some(0.0), false);
        cw.close_wait = 40;
        let report = Report {
            processes: vec![
                process(10, "busy", vec![site("b16", FdKind::File, 500, Some(0.0), false), cw]),
                process(
                    20,
                    "leaky",
                    vec![
                        site("1eaf", FdKind::Socket, 60, Some(60.0), true),
                        site("before-trace", FdKind::File, 900, None, false),
                    ],
                ),
            ],
            ..empty_report()
        };
        Report { suspected_leaks: 1, ..report }
    }

    fn screen(ui: &mut Ui, report: Option<&Report>) -> String {
        let mut terminal = Terminal::new(TestBackend::new(170, 24)).unwrap();
        terminal.draw(|frame| render(frame, ui, report, "pid 20")).unwrap();
        terminal.backend().to_string()
    }

    #[test]
    fn sites_rank_suspected_leaks_first_and_skip_before_trace() {
        let report = sample();
        let rows: Vec<&str> = site_rows(&report, SortBy::Open).iter().map(|(_, s)| s.site.as_str()).collect();
        assert_eq!(rows, ["1eaf", "b16", "c105e"]);
        let rows: Vec<u32> = process_rows(&report, SortBy::Open).iter().map(|p| p.pid).collect();
        assert_eq!(rows, [20, 10]);
    }

    #[test]
    fn the_site_view_shows_frames_counts_growth_and_flags() {
        let report = sample();
        let mut ui = Ui::default();
        let text = screen(&mut ui, Some(&report));
        assert!(text.contains("1 suspected leak"), "{text}");
        assert!(text.contains("frame-of-1eaf"), "{text}");
        assert!(text.contains("+60/min"), "{text}");
        assert!(text.contains("LEAK?"), "{text}");
        assert!(text.contains("CLOSE_WAIT"), "{text}");
        assert!(text.contains("close 100"), "{text}");
        assert!(text.contains("6.0 MB"), "socket memory of the leaking site: {text}");
        assert!(text.contains("suspected leak: +60/min for 1m 0s"), "the selected row's why: {text}");
        assert!(!text.contains("frame-of-before-trace"), "{text}");
    }

    #[test]
    fn the_selected_site_shows_its_holders() {
        use crate::model::holders::{Holder, NO_PYTHON_OWNER};

        let mut report = sample();
        let held = |count, note: Option<&'static str>| Holder {
            count,
            root: note.is_none().then(|| "__main__:UnitTrackingWSHandler._ws_connections".to_string()),
            path: note.is_none().then(|| ".reader._transport._sock".to_string()),
            container: note.is_none().then(|| "set".to_string()),
            container_size: note.is_none().then_some(58),
            note,
        };
        report.processes[1].sites[0].holders = Some(vec![held(58, None), held(2, Some(NO_PYTHON_OWNER))]);
        let text = screen(&mut Ui::default(), Some(&report));
        assert!(
            text.contains(
                "holders: 58 held by __main__:UnitTrackingWSHandler._ws_connections (set of 58) via .reader._transport._sock"
            ),
            "{text}"
        );
        assert!(text.contains("holders: 2 no Python owner"), "{text}");
    }

    #[test]
    fn the_selected_python_site_folds_the_interpreter_frames() {
        use crate::model::frame::tests::accept_stack;

        let mut report = sample();
        let frames = accept_stack(&[("PyObject_Vectorcall", 0x55), ("method_vectorcall", 0x12)], 0x1b3e, &[]);
        for site in report.processes.iter_mut().flat_map(|p| p.sites.iter_mut()) {
            site.frames = frames.clone();
        }
        let text = screen(&mut Ui::default(), Some(&report));
        assert!(text.contains("#1  sock_accept in _socket.cpython-312"), "{text}");
        assert!(text.contains("… 2 interpreter frames"), "{text}");
        assert!(text.contains("#4  socket.accept (/x/lib/python3.12/socket.py:295)"), "{text}");
        assert!(!text.contains("PyObject_Vectorcall"), "{text}");
        let text = screen(&mut Ui { frames: FrameDisplay::All, ..Ui::default() }, Some(&report));
        assert!(text.contains("#2  PyObject_Vectorcall"), "{text}");
        assert!(!text.contains("interpreter frames"), "{text}");
    }

    #[test]
    fn keys_pause_switch_and_quit() {
        let report = sample();
        let mut ui = Ui::default();
        assert!(!ui.handle(Key::Pause));
        assert!(screen(&mut ui, Some(&report)).contains("[PAUSED]"));
        assert!(!ui.handle(Key::SwitchView));
        let text = screen(&mut ui, Some(&report));
        assert!(text.contains("TOP SITE"), "{text}");
        assert!(text.contains("60 socket at frame-of-1eaf"), "{text}");
        assert!(text.contains("240 MB"), "RSS: {text}");
        assert!(text.contains("9h 12m"), "time until the fd limit: {text}");
        ui.handle(Key::Down);
        ui.handle(Key::Down);
        ui.handle(Key::Down);
        screen(&mut ui, Some(&report));
        assert_eq!(ui.selected, 1, "the selection stays on the rows");
        ui.handle(Key::Sort);
        assert!(screen(&mut ui, Some(&report)).contains("processes by growth"));
        assert!(ui.handle(Key::Quit));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(Key::from_event(ctrl_c), Key::Quit);
        assert_eq!(Key::from_event(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)), Key::Quit);
        assert!(screen(&mut Ui::default(), None).contains("waiting for the first sample"));
    }

    #[test]
    fn a_summary_line_names_the_worst_site() {
        let line = summary_line(&sample());
        assert!(
            line.starts_with("helios-trace 30.0s: 2 processes, 1,500 open, 5 events (0 lost); "),
            "{line}"
        );
        assert!(
            line.ends_with("1 suspected leak: pid 20 leaky 60 socket open at frame-of-1eaf (+60/min)"),
            "{line}"
        );
        let quiet = Report {
            processes: vec![process(10, "busy", vec![site("b16", FdKind::File, 5, None, false)])],
            ..empty_report()
        };
        assert!(
            summary_line(&quiet)
                .ends_with("no suspected leak; most open: pid 10 busy 5 file at frame-of-b16 (-)")
        );
        // A session too short for a verdict says so, and how long it needs.
        let short = Report { duration_seconds: 3.0, judged: false, ..quiet };
        assert!(
            summary_line(&short).ends_with(
                "too short to judge leaks (a verdict needs 9.0s of tracing); most open: pid 10 busy 5 file at frame-of-b16 (-)"
            ),
            "{}",
            summary_line(&short)
        );
    }

    pub(crate) fn empty_report() -> Report {
        Report {
            helios_trace_report: 1,
            started_at: "2026-03-14T08:47:00Z".into(),
            duration_seconds: 30.0,
            events: EventCounts { received: 5, ..Default::default() },
            reconcile_corrections: Corrections::default(),
            dropped: Default::default(),
            min_age_seconds: 10.0,
            suspected_leaks: 0,
            judged: true,
            judge_after_seconds: 9.0,
            facts_unavailable: Default::default(),
            command: None,
            processes: Vec::new(),
        }
    }
}
