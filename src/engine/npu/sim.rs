//! The simulated NPU device behind `backend=npu-sim`: buffer objects in host memory, and a run
//! that executes the golden model ([`super::golden::Machine`]) on them. It checks what the real
//! device would silently get wrong: every argument in the kernel's order and of the right kind,
//! the opcode and instruction count, the instruction stream, inputs synced to the device before
//! the run, outputs synced back before they are read, one run at a time. It records every run's
//! arguments and counts the runs; tests can make the next run time out or fail.

use std::time::Duration;

use super::device::{BoHandle, BoKind, DeviceError, NpuDevice, RunArg, SyncDir};
use super::golden::{Bo, Machine};
use super::manifest::{Arg, ArgKind, Direction};
use super::tiling::Plan;

/// The stand-in instruction stream the simulator expects (it runs the plan, not instructions):
/// a magic word, the plan's step count, layers and width. Checked word for word at each run, so
/// a host that loads or passes the instructions wrongly fails.
pub fn instruction_stream(plan: &Plan) -> Vec<u32> {
    vec![
        0x5749_534d, // "WISM"
        plan.steps.len() as u32,
        plan.layers as u32,
        plan.d as u32,
    ]
}

/// A fault the next run suffers (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The run never finishes: `wait` times out; the output BO holds garbage (NaN).
    Timeout,
    /// The run ends in an error state; the output BO holds garbage (NaN).
    Fail,
}

struct SimBo {
    bo: Bo,
    bytes: usize,
    kind: BoKind,
    arg_index: usize,
    /// Mapped by the host since its last sync to the device.
    host_written: bool,
    /// Written by a run since its last sync from the device.
    device_written: bool,
}

/// The simulated device.
pub struct SimDevice {
    machine: Machine,
    layout: Vec<Arg>,
    bos: Vec<SimBo>,
    /// A run started and not yet waited for: its outcome.
    started: Option<Result<(), SimFault>>,
    runs: Vec<Vec<RunArg>>,
    fault: Option<SimFault>,
}

impl SimDevice {
    /// A device running `plan` for kernels whose arguments are `layout`.
    pub fn new(plan: Plan, layout: Vec<Arg>) -> Self {
        Self {
            machine: Machine::new(plan),
            layout,
            bos: Vec::new(),
            started: None,
            runs: Vec::new(),
            fault: None,
        }
    }

    /// The arguments of every run so far, in order.
    pub fn runs(&self) -> &[Vec<RunArg>] {
        &self.runs
    }

    /// The next run suffers `fault`.
    pub fn inject(&mut self, fault: SimFault) {
        self.fault = Some(fault);
    }

    fn protocol<T>(why: String) -> Result<T, DeviceError> {
        Err(DeviceError::Protocol(why))
    }

    fn bo(&mut self, bo: BoHandle) -> Result<&mut SimBo, DeviceError> {
        self.bos
            .get_mut(bo.0)
            .ok_or_else(|| DeviceError::Protocol(format!("no buffer object {}", bo.0)))
    }

    /// [`NpuDevice::start`], calling `probe(layer, x)` after each layer of the run.
    pub fn start_probed(
        &mut self,
        args: &[RunArg],
        probe: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), DeviceError> {
        if self.started.is_some() {
            return Self::protocol(
                "a run was started before the previous one was waited for".into(),
            );
        }
        if args.len() != self.layout.len() {
            return Self::protocol(format!(
                "{} arguments, the kernel takes {}",
                args.len(),
                self.layout.len()
            ));
        }
        let mut role = std::collections::HashMap::new();
        let mut instructions = None;
        let mut count = None;
        for (i, (arg, want)) in args.iter().zip(&self.layout).enumerate() {
            let name = want.name.as_str();
            match (want.kind, arg) {
                (ArgKind::Scalar, RunArg::U32(_) | RunArg::U64(_)) => {
                    let v = match *arg {
                        RunArg::U32(v) => u64::from(v),
                        RunArg::U64(v) => v,
                        RunArg::Bo(_) => unreachable!(),
                    };
                    if let Some(fixed) = want.value
                        && v != fixed
                    {
                        return Self::protocol(format!(
                            "argument {i} `{name}` is {v}, not {fixed}"
                        ));
                    }
                    if name == "instruction_count" {
                        count = Some(v);
                    }
                }
                (ArgKind::Instructions | ArgKind::Buffer, RunArg::Bo(h)) => {
                    let bo = self.bos.get(h.0).ok_or_else(|| {
                        DeviceError::Protocol(format!("argument {i} `{name}`: no such BO"))
                    })?;
                    if bo.arg_index != i {
                        return Self::protocol(format!(
                            "argument {i} `{name}` is the BO allocated for argument {}",
                            bo.arg_index
                        ));
                    }
                    let kind = if want.kind == ArgKind::Instructions {
                        BoKind::Instructions
                    } else {
                        BoKind::Data
                    };
                    if bo.kind != kind {
                        return Self::protocol(format!(
                            "argument {i} `{name}` is a {:?} BO",
                            bo.kind
                        ));
                    }
                    if want.direction != Some(Direction::Out) && bo.host_written {
                        return Self::protocol(format!(
                            "argument {i} `{name}` was written by the host and not synced to \
                             the device"
                        ));
                    }
                    if kind == BoKind::Instructions {
                        instructions = Some(h.0);
                    } else {
                        role.insert(name.to_string(), h.0);
                    }
                }
                _ => {
                    return Self::protocol(format!(
                        "argument {i} `{name}` ({:?}) got {arg:?}",
                        want.kind
                    ));
                }
            }
        }
        let expected = instruction_stream(self.machine.plan());
        let Some(ins) = instructions else {
            return Self::protocol("no instruction buffer".into());
        };
        let words: Vec<u32> = self.bos[ins].bo.as_bytes()[..self.bos[ins].bytes]
            .chunks_exact(4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        if words != expected {
            return Self::protocol(format!(
                "instruction stream {words:x?}, expected {expected:x?}"
            ));
        }
        if count != Some(expected.len() as u64) {
            return Self::protocol(format!(
                "instruction count {count:?}, the stream has {} words",
                expected.len()
            ));
        }
        let mut take = |name: &str| -> Result<(usize, Bo), DeviceError> {
            let &i = role
                .get(name)
                .ok_or_else(|| DeviceError::Protocol(format!("no `{name}` argument")))?;
            Ok((i, std::mem::take(&mut self.bos[i].bo)))
        };
        let (wi, weights) = take("weights")?;
        let (ii, input) = take("mel")?;
        let (si, mut scratch) = take("scratch")?;
        let (oi, mut output) = take("encoder_out")?;
        self.machine
            .run(&weights, &input, &mut scratch, &mut output, probe);
        let outcome = match self.fault.take() {
            None => Ok(()),
            Some(fault) => {
                // Whatever the device left behind is not the result.
                output.as_bytes_mut().chunks_exact_mut(4).for_each(|w| {
                    w.copy_from_slice(&f32::NAN.to_ne_bytes());
                });
                Err(fault)
            }
        };
        for (i, bo) in [(wi, weights), (ii, input), (si, scratch), (oi, output)] {
            self.bos[i].bo = bo;
        }
        for i in [si, oi] {
            self.bos[i].device_written = true;
        }
        self.runs.push(args.to_vec());
        self.started = Some(outcome);
        Ok(())
    }
}

impl NpuDevice for SimDevice {
    fn alloc_bo(
        &mut self,
        bytes: usize,
        kind: BoKind,
        arg_index: usize,
    ) -> Result<BoHandle, DeviceError> {
        if self.bos.iter().any(|b| b.arg_index == arg_index) {
            return Self::protocol(format!("a second BO for argument {arg_index}"));
        }
        self.bos.push(SimBo {
            bo: Bo::new(bytes),
            bytes,
            kind,
            arg_index,
            host_written: false,
            device_written: false,
        });
        Ok(BoHandle(self.bos.len() - 1))
    }

    fn map(&mut self, bo: BoHandle) -> Result<&mut [u8], DeviceError> {
        let b = self.bo(bo)?;
        if b.device_written {
            return Self::protocol(format!(
                "the BO of argument {} was mapped after a run without a sync from the device",
                b.arg_index
            ));
        }
        b.host_written = true;
        let bytes = b.bytes;
        Ok(&mut b.bo.as_bytes_mut()[..bytes])
    }

    fn sync(&mut self, bo: BoHandle, direction: SyncDir) -> Result<(), DeviceError> {
        let b = self.bo(bo)?;
        match direction {
            SyncDir::ToDevice => b.host_written = false,
            SyncDir::FromDevice => b.device_written = false,
        }
        Ok(())
    }

    fn start(&mut self, args: &[RunArg]) -> Result<(), DeviceError> {
        self.start_probed(args, &mut |_, _| {})
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), DeviceError> {
        match self.started.take() {
            None => Self::protocol("wait without a run started".into()),
            Some(Ok(())) => Ok(()),
            Some(Err(SimFault::Timeout)) => Err(DeviceError::Timeout(timeout)),
            Some(Err(SimFault::Fail)) => Err(DeviceError::RunFailed(
                "ert_cmd_state 5 (error), injected by the simulator".into(),
            )),
        }
    }
}
