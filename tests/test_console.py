"""The consoles' training-phase view: each agent's phase verdict, its held-back t included."""

from __future__ import annotations

import io

from rich.console import Console

from simulation.console import LiveConsole, PlainConsole
from training.phase import PhaseRow


def _row(agent_id: int, t: float | None, kept: int) -> PhaseRow:
    return PhaseRow(phase=1, step=49, agent_id=agent_id, samples=100, heldout_states=26, beliefs=100, epochs=3, kept_epoch=kept, loss=0.1,
                    decision_kl=0.2, belief_kl=0.01, grad_norm=0.5, heldout_pay_before=-0.05, heldout_pay_after=-0.05 if kept == 0 else 0.02,
                    heldout_t=t, belief_advantage_std=None, reward_mean=0.0, reward_std=0.01, seconds=22.6, adapter_path="adapters/phase_1/agent_0",
                    adapter_version=1, belief_text_share=0.7)


def test_the_learning_panel_and_the_plain_lines_show_each_agents_held_back_t():
    screen = Console(record=True, width=160, file=io.StringIO())
    live = LiveConsole(10, {"model": "tiny"}, console=screen)
    for row in (_row(0, 2.28, 2), _row(1, 0.96, 0), _row(2, None, 0)):
        live.on_phase_agent(1, row)
    screen.print(live.learning_panel())
    lines = [line for line in screen.export_text().splitlines() if "│" in line]
    header = next(line for line in lines if "held-back pay" in line)
    assert " t " in header
    assert any("+2.28" in line and "3 (2)" in line for line in lines)
    assert any("+0.96" in line and "3 (0)" in line for line in lines)

    stream = io.StringIO()
    PlainConsole(10, {"model": "tiny"}, stream=stream).on_phase_agent(1, _row(0, 2.28, 2))
    assert "(kept 2) held-back pay -0.050 -> +0.020 t +2.28" in stream.getvalue()
