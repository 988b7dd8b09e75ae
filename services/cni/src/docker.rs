//! Docker mode (k3s `--docker`): attach the pod's sandbox container to a
//! Docker user-defined network through the Docker Engine API.

use crate::netconf::NetConf;
use crate::spec::{CniError, CniResult, Env, code};

fn unsupported() -> CniError {
    CniError::new(
        code::UNSUPPORTED_FIELD,
        "mode \"docker\" is not implemented in this build",
    )
}

/// ADD.
pub fn add(_conf: &NetConf, _env: &Env) -> Result<CniResult, CniError> {
    Err(unsupported())
}

/// DEL.
pub fn del(_conf: &NetConf, _env: &Env) -> Result<(), CniError> {
    Err(unsupported())
}

/// CHECK.
pub fn check(_conf: &NetConf, _env: &Env) -> Result<(), CniError> {
    Err(unsupported())
}

/// STATUS.
pub fn status(_conf: &NetConf) -> Result<(), CniError> {
    Err(unsupported())
}
