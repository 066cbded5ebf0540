"""Real TensorRT / cuda-python API names for tiercel's CPU fake module.

Pure data.  Nothing here imports tensorrt or cuda.

HOW THE NAMES WERE OBTAINED (sources)
=====================================
[S1] NVIDIA/TensorRT tag v10.3.0, commit c5b9de37f7ef9034e2efc621c664145c7c12436e
     (2024-08-08): python/src/infer/{pyCore,pyGraph,pyFoundationalTypes,pyInt8}.cpp,
     python/src/parsers/pyOnnx.cpp (the pybind11 bindings themselves),
     python/packaging/bindings_wheel/tensorrt/__init__.py, python/build.sh,
     include/NvInfer.h, include/NvInferRuntime.h, include/NvInferVersion.h.
[S2] NVIDIA/TensorRT tag v11.1, commit 82d1dca801c8318a5605399d5240780d0679e4e1
     (2026-06-24): the same files.  Cross-checked against tag v11.0
     (771d8efdf7f9d7b1eeb0864eb05d4dd8a7755bb5): for every class below 11.0 and 11.1 are
     identical except IBuilderConfig (11.1 adds build_route, all_build_routes).
[S3] NVIDIA/TensorRT tag v10.16: include/NvInfer.h, include/NvInferRuntime.h,
     python/docstrings/** -- used only for DEPRECATED_IN_10 (which 10.x release
     deprecated what).
[S4] NVIDIA/TensorRT main (= v11.1): .agents/skills/trt-strong-typing-migration/SKILL.md
     (NVIDIA-written migration notes; secondary source).
[S5] docs.nvidia.com (seen through the search tool, excerpts only):
     - https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
       and .../11.4.0/api/migration/tensorrt-10x-to-11x-python-api-reference.html
       ("Removed Python APIs and Replacements": BuilderFlag.FP16/INT8/FP8/BF16/INT4/FP4/
       OBEY_PRECISION_CONSTRAINTS/PREFER_PRECISION_CONSTRAINTS/DIRECT_IO,
       IBuilderConfig.int8_calibrator, set/get_calibration_profile, *_quantization_flag(s),
       ICudaEngine.device_memory_size -> device_memory_size_v2, ...)
     - https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-c-api-reference.html
       (says kDIRECT_IO is "deprecated, not removed" in 11.4.1 headers)
     - https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/getting-started/release-notes-11/11.0.0.html
       ("Strongly typed networks are now the default ... Weak typing is no longer supported")
     - https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x.html
       ("Strongly Typed Networks Are Now Required"; "JetPack is not supported in TensorRT 11.4.0")
     - https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes-11/11.4.1.html
       (11.4.1 adds JetPack 7.2.2+ / Jetson AGX Orin via the SBSA package)
[S6] cuda-python: wheels cuda-bindings==12.9.0 and cuda-bindings==13.5.0 (+cuda-pathfinder)
     installed from PyPI into throw-away venvs and introspected on a machine WITHOUT a
     GPU: attribute existence, docstring signatures, and the actual return tuples of
     calls that fail with cudaErrorInsufficientDriver.

WHAT "TRT_11" MEANS: the Python bindings at tag v11.1 [S2].  The newest release is 11.4
(PyPI / GitHub release 11.4, commit 16ed063), but no 11.2-11.4 source was available to
this research; 11.4 was checked only against the 11.4.0/11.4.1 migration pages [S5],
which list the same removals.  Names ADDED in 11.2-11.4 are therefore missing here, and
it is unverified whether anything further was removed after 11.1.  One known drift:
docs.rs trtx-sys (a third-party binding) lists a BuilderFlag kREQUIRE_USER_ALLOCATION=28
that 11.1 does not have -- probably a post-11.1 addition (not verified).

Method: a small script collected every pybind11 .def/.def_property*/.def_readwrite/.value
name that follows each py::class_/py::enum_ declaration; the classes listed below were then
read by eye in the .cpp files.  Names added by tensorrt/__init__.py (not by pybind) are
__version__, volume, nptype, Logger.Severity and Logger.<severity members>.  Dunder
methods are dropped except __len__/__getitem__/__bool__/__version__.

KEY ANSWERS
===========
(1) Does TensorRT 11 remove BuilderFlag.FP16/INT8/BF16/OBEY_PRECISION_CONSTRAINTS, weak
    typing and calibrators?  YES.  In the v11.1 bindings [S2] BuilderFlag has no FP16,
    INT8, BF16, FP8, INT4, FP4, OBEY_PRECISION_CONSTRAINTS, PREFER_PRECISION_CONSTRAINTS,
    REJECT_EMPTY_ALGORITHMS, WEIGHTLESS; TF32 is KEPT.  Calibrators are gone: no
    IInt8Calibrator / IInt8EntropyCalibrator(2) / IInt8MinMaxCalibrator /
    IInt8LegacyCalibrator / CalibrationAlgoType / QuantizationFlag, no
    IBuilderConfig.int8_calibrator / set_calibration_profile / *_quantization_flag*,
    no ITensor.dynamic_range.  Builder.platform_has_fast_fp16 / platform_has_fast_int8 /
    platform_has_tf32 are gone too.  Weak typing is gone (release notes 11.0.0 [S5]:
    "Weak typing is no longer supported").  These flags were deprecated in 10.12 [S3].
    Caveat: DIRECT_IO is still bound in v11.1 Python (deprecated since 10.7) although the
    11.x Python migration page lists it as removed; 11.4.1 C++ page says "deprecated, not
    removed".  Treat DIRECT_IO as "may exist, do not use".
    Note also the C++ enum VALUES were renumbered in 11 (e.g. VERSION_COMPATIBLE 13->12,
    STRONGLY_TYPED 1->0): never hard-code integer values, always go through the enum.
(2) STRONGLY_TYPED in 10.3?  YES: NetworkDefinitionCreationFlag has EXPLICIT_BATCH
    (deprecated in 10.0, ignored: networks are always explicit batch) and STRONGLY_TYPED
    (= 1, opt-in; create_network(flags=0) is weakly typed) [S1].  In 11 strong typing is
    the ONLY mode: "The network is always strongly typed ... The kSTRONGLY_TYPED flag is
    deprecated and ignored" (NvInfer.h createNetworkV2 doc, v11.1) and STRONGLY_TYPED is
    "Deprecated in TensorRT 11.0. Strongly typed mode is always enabled" [S2].
    EXPLICIT_BATCH is NOT present in 11 (Python or C++) [S2].  Portable call:
    builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    works on both (10.3: bit 1; 11: bit 0, ignored).  Do NOT hard-code 2: in 11, bit 1 is
    PREFER_JIT_PYTHON_PLUGINS.  (NVIDIA's skill file [S4] says strong typing is "fully
    available from 10.12"; the flag itself exists and is documented in 10.3 [S1]; how
    complete 10.3's strongly-typed support is for every layer is not verified.)
(3) Disallowed in strongly typed mode (10.3 NvInfer.h [S1]): ILayer.setPrecision
    ("Strongly-typed networks reject calls to method setPrecision"), ILayer.setOutputType
    ("reject calls ... the output type can be set only for layers that define setToType():
    ICastLayer, IDequantizeLayer, IFillLayer, IQuantizeLayer"), and
    INormalizationLayer.setComputePrecision.  The STRONGLY_TYPED flag doc: "Setting layer
    precision and layer output types is not allowed".  Precision builder flags: per
    [S4] "BuilderFlag::kFP16 is not compatible with a strongly typed network" and "on TRT
    10.12+ they conflict with strong typing" -- the exact 10.3 behaviour when FP16/INT8 is
    set together with STRONGLY_TYPED (error vs. warning-and-ignore) is NOT verified; tiercel
    should simply never set them with STRONGLY_TYPED.  In 11 these setters no longer exist
    in Python at all (ILayer has no precision/set_output_type) [S2].  Control precision with
    network.add_cast(t, trt.float16) and Q/DQ layers; set network-input dtypes in add_input.
(4) Several profiles, one engine: ctx.set_optimization_profile_async(profile_index,
    stream_handle) (Python args exactly "profile_index", "stream_handle"; stream is an int
    handle; returns bool) must be called BEFORE set_input_shape; a new context starts on
    profile 0; ctx.active_optimization_profile is READ-ONLY (def_property_readonly) in 10.3
    and 11 [S1][S2].  engine.get_tensor_profile_shape(name, profile_index) -> [min, opt, max]
    (args "name", "profile_index") in both.  Same signatures in 10.3 and 11.1.  Two contexts
    on the same profile: NvInferRuntime.h (10.3 and 11.1) IExecutionContext class doc:
    "If the engine supports dynamic shapes, each execution context in concurrent use must
    use a separate optimization profile."  So: sequential reuse is fine, concurrent use of
    one profile by two contexts is not allowed (for dynamic-shape engines).
    ICudaEngine.create_execution_context(strategy=ExecutionContextAllocationStrategy.STATIC)
    exists in both; 11 adds an overload create_execution_context(runtime_config=None).
(5) Version at runtime: tensorrt.__version__ (set in tensorrt/__init__.py).  For the OSS
    build script at v10.3.0 it is "MAJOR.MINOR.PATCH", i.e. "10.3.0" (python/build.sh:
    TENSORRT_PYTHON_VERSION = TRT_MAJMINPATCH) [S1].  In 11.x it comes from CMake
    TensorRT_PACKAGE_VERSION, documented as "Usually major.minor.patch.build" [S2]; recent
    PyPI wheels also use 4 components (e.g. 10.13.3.9).  So parse leniently:
    tuple(int(x) for x in __version__.split(".")[:2]) -- do not assume 3 fields.
    (The exact string on JetPack 6 / L4T apt packages is not verified.)
(6) Unchanged in 11.1 vs 10.3 (same Python names and argument names) [S1][S2]:
    ICudaEngine.get_tensor_profile_shape(name, profile_index), num_io_tensors,
    get_tensor_name(index), get_tensor_mode(name), get_tensor_dtype(name),
    get_tensor_shape(name), num_optimization_profiles;
    IExecutionContext.execute_async_v3(stream_handle), set_input_shape(name, shape),
    set_tensor_address(name, memory), get_tensor_shape(name),
    set_optimization_profile_async(profile_index, stream_handle).
    Differences: 10.3 releases the GIL in set_optimization_profile_async, 11.1 does not
    (irrelevant to callers).  Removed in 11: ICudaEngine.device_memory_size,
    get_device_memory_size_for_profile, create_execution_context_without_device_memory,
    weight_streaming_budget, minimum_weight_streaming_budget, has_implicit_batch_dimension;
    IExecutionContext.all_shape_inputs_specified.
(7) Builder.build_serialized_network(network, config) still exists in 11.1 and returns
    IHostMemory (pybind: IHostMemory* (IBuilder::*)(INetworkDefinition&, IBuilderConfig&));
    11 adds a 3-arg overload (network, config, kernel_text) and
    build_serialized_network_to_stream / build_engine_with_config [S2].  IHostMemory keeps
    nbytes, dtype and the Python buffer protocol (py::buffer_protocol + def_buffer) in both.
    Runtime.deserialize_cuda_engine(serialized_engine) exists in both; the IStreamReader
    overload of 10.3 became IStreamReaderV2-only in 11.
(8) Q/DQ dtypes in a strongly typed network:
    10.3 [S1] NvInfer.h: IDequantizeLayer "For strongly typed networks, output data type is
    inferred from scale data type"; addDequantize: scale dtype "For strongly typed
    networks, it must be the same as the output data type"; addQuantize: scale "must have
    the same data type as the input".  => fp32 scales give an fp32 DQ output; to stay in
    fp16, the activation feeding Q must be fp16 and BOTH Q and DQ scales must be fp16
    (then DQ outputs fp16).  Input to Q may be FLOAT/HALF/BF16.
    11.1 [S2]: scale may be FLOAT, HALF, BF16 (or E8M0 for MXFP8); "if the scale type is
    kHALF or kBF16 the output type must match"; IDequantizeLayer "output data type must be
    configured explicitly using setToType"; Python add_quantize/add_dequantize REQUIRE the
    third arg output_type in 11 (the 2-arg overloads of 10.3 are gone).
    Recipe for INT8 GEMMs with fp16 elsewhere: fp16 activations -> Q(scale fp16, int8) ->
    DQ(scale fp16, out fp16) -> MatMul/Conv whose weights are also int8 constant -> DQ
    (fp16 scale); TensorRT fuses DQ->GEMM into an INT8 kernel [S4: "TensorRT fuses the
    Q/DQ into it so it runs in INT8"].  From ONNX: use fp16 y_scale/x_scale initializers
    (ONNX DequantizeLinear output type == scale type, opset>=19) -- e.g. ModelOpt
    `modelopt.onnx.quantization --quantize_mode int8 --high_precision_dtype fp16` [S4].
    Whether fusion still happens with fp32 scales followed by an explicit Cast to fp16
    is NOT verified.  In 11 the same works with add_dequantize(x, s_fp32, trt.float16)
    per the 11.1 header text (fp32 scale not constrained) -- inferred from the header
    text, not tested.

CUDA (cuda.bindings.runtime) [S6]: every name in CUDA_RUNTIME exists in cuda-bindings
12.9.0 and 13.5.0.  Every call returns a TUPLE whose first element is cudaError_t; calls
with an output return (err, value) and value is None on error; calls without an output
return a 1-tuple (err,).  See CUDA_RUNTIME_RETURNS.  Not verified: cuda-python < 12.8
(the `cuda.bindings` namespace appeared in the 12.6.x line; older code used
`from cuda import cudart`) -- JetPack 6 ships CUDA 12.6, so pin cuda-python/cuda-bindings
>= 12.8 there or fall back to `cuda.cudart` (inferred, not checked).
"""

# ---------------------------------------------------------------------------
# Per-class notes (apply to both TRT_10_3 and TRT_11 unless stated)
# ---------------------------------------------------------------------------
# tensorrt (module): classes/enums/functions read from the pybind sources plus
#   __version__, volume, nptype from tensorrt/__init__.py.  Type aliases
#   float32/float16/bfloat16/int8/int32/int64/int4/uint8/bool/fp8 (+ fp4, e8m0 in 11)
#   are module attributes equal to DataType members.  Context-manager helpers
#   (common_enter/common_exit) omitted.  NOT verified: names from other files of the
#   wheel (tensorrt.plugin submodule, lean/dispatch runtime packages).
#   There is NO `IParserError` in Python: the class is `tensorrt.ParserError`.
# Logger / ILogger: severity members are bound on ILogger (export_values) and copied
#   onto Logger by __init__.py; Logger(min_severity=Logger.WARNING); Logger.Severity.
# ParserError: code/desc/node/... are METHODS (err.desc(), err.code(), err.node()),
#   not properties.  ErrorCode is the ONNX-parser enum; ErrorCodeTRT the core one.
# OnnxParser: parse(model, path=None) -> bool, parse_from_file(model) -> bool,
#   num_errors (property), get_error(index) -> ParserError, clear_errors().
# IBuilderConfig: set_memory_pool_limit(pool, size), get_memory_pool_limit(pool),
#   set_flag/clear_flag/get_flag(BuilderFlag), add_optimization_profile(profile) -> int,
#   builder_optimization_level / profiling_verbosity are read-write properties.
# BuilderFlag: STRICT_TYPES does NOT exist in 10.3 (removed long before 10.0) nor in 11.
#   TF32 exists in both.  DIRECT_IO still bound in 11.1 (deprecated), see docstring.
# ILayer: in 11 only name/metadata/num_ranks/type/num_inputs/num_outputs/get_input/
#   set_input/get_output/get_output_type.  precision & friends are 10.x only.
# IExecutionContext: active_optimization_profile is read-only; select a profile with
#   set_optimization_profile_async(profile_index, stream_handle).
# IHostMemory: nbytes, dtype + Python buffer protocol (bytes(host_mem) / memoryview work).
#   The buffer protocol is not an attribute name, so it is not listed.
# Not verified anywhere here: exact runtime signatures/overload resolution (only names),
#   and any 11.2-11.4 additions/removals.

# Names present in the TensorRT 10.3 Python bindings (JetPack 6 / Jetson Orin). [S1]
TRT_10_3: dict[str, frozenset[str]] = {
    'tensorrt': frozenset({
        'APILanguage', 'ActivationType', 'AllocatorFlag', 'BoundingBoxFormat', 'Builder', 'BuilderFlag',
        'CalibrationAlgoType', 'DataType', 'DeviceType', 'DimensionOperation', 'Dims', 'Dims2', 'Dims3',
        'Dims4', 'DimsExprs', 'DimsHW', 'DynamicPluginTensorDesc', 'ElementWiseOperation',
        'EngineCapability', 'EngineInspector', 'ErrorCode', 'ErrorCodeTRT',
        'ExecutionContextAllocationStrategy', 'FallbackString', 'FillOperation', 'GatherMode',
        'HardwareCompatibilityLevel', 'IActivationLayer', 'IAlgorithm', 'IAlgorithmContext',
        'IAlgorithmIOInfo', 'IAlgorithmSelector', 'IAlgorithmVariant', 'IAssertionLayer', 'IBuilderConfig',
        'ICastLayer', 'IConcatenationLayer', 'IConditionLayer', 'IConstantLayer', 'IConvolutionLayer',
        'ICudaEngine', 'IDebugListener', 'IDeconvolutionLayer', 'IDequantizeLayer', 'IDimensionExpr',
        'IEinsumLayer', 'IElementWiseLayer', 'IErrorRecorder', 'IExecutionContext', 'IExprBuilder',
        'IFillLayer', 'IGatherLayer', 'IGpuAllocator', 'IGpuAsyncAllocator', 'IGridSampleLayer',
        'IHostMemory', 'IIdentityLayer', 'IIfConditional', 'IIfConditionalBoundaryLayer',
        'IIfConditionalInputLayer', 'IIfConditionalOutputLayer', 'IInt8Calibrator', 'IInt8EntropyCalibrator',
        'IInt8EntropyCalibrator2', 'IInt8LegacyCalibrator', 'IInt8MinMaxCalibrator', 'IIteratorLayer',
        'ILRNLayer', 'ILayer', 'ILogger', 'ILoop', 'ILoopBoundaryLayer', 'ILoopOutputLayer',
        'IMatrixMultiplyLayer', 'INMSLayer', 'INetworkDefinition', 'INonZeroLayer', 'INormalizationLayer',
        'IOneHotLayer', 'IOptimizationProfile', 'IOutputAllocator', 'IPaddingLayer', 'IParametricReLULayer',
        'IPluginCapability', 'IPluginCreator', 'IPluginCreatorInterface', 'IPluginCreatorV3One',
        'IPluginRegistry', 'IPluginResource', 'IPluginResourceContext', 'IPluginV2', 'IPluginV2DynamicExt',
        'IPluginV2DynamicExtBase', 'IPluginV2Ext', 'IPluginV2Layer', 'IPluginV3', 'IPluginV3Layer',
        'IPluginV3OneBuild', 'IPluginV3OneBuildV2', 'IPluginV3OneCore', 'IPluginV3OneRuntime',
        'IPoolingLayer', 'IProfiler', 'IProgressMonitor', 'IQuantizeLayer', 'IRaggedSoftMaxLayer',
        'IRecurrenceLayer', 'IReduceLayer', 'IResizeLayer', 'IReverseSequenceLayer', 'IScaleLayer',
        'IScatterLayer', 'ISelectLayer', 'ISerializationConfig', 'IShapeLayer', 'IShuffleLayer',
        'ISliceLayer', 'ISoftMaxLayer', 'IStreamReader', 'ITensor', 'ITimingCache', 'ITopKLayer',
        'ITripLimitLayer', 'IUnaryLayer', 'IVersionedInterface', 'InterfaceInfo', 'InterpolationMode',
        'LayerInformationFormat', 'LayerType', 'Logger', 'LoopOutput', 'MatrixOperation', 'MemoryPoolType',
        'NetworkDefinitionCreationFlag', 'OnnxParser', 'OnnxParserFlag', 'OnnxParserRefitter', 'PaddingMode',
        'ParserError', 'Permutation', 'PluginCapabilityType', 'PluginCreatorVersion', 'PluginField',
        'PluginFieldCollection_', 'PluginFieldType', 'PluginTensorDesc', 'PoolingType', 'PreviewFeature',
        'Profiler', 'ProfilingVerbosity', 'QuantizationFlag', 'ReduceOperation', 'Refitter',
        'ResizeCoordinateTransformation', 'ResizeRoundMode', 'ResizeSelector', 'Runtime', 'RuntimePlatform',
        'SampleMode', 'ScaleMode', 'ScatterMode', 'SerializationFlag', 'TacticSource', 'TempfileControlFlag',
        'TensorFormat', 'TensorIOMode', 'TensorLocation', 'TensorRTPhase', 'TopKOperation', 'TripLimit',
        'UnaryOperation', 'Weights', 'WeightsRole', '__version__', 'bfloat16', 'bool', 'float16', 'float32',
        'fp8', 'get_builder_plugin_registry', 'get_nv_onnx_parser_version', 'get_plugin_registry',
        'init_libnvinfer_plugins', 'int32', 'int4', 'int64', 'int8', 'nptype', 'uint8', 'volume',
    }),
    'Logger': frozenset({
        'ERROR', 'INFO', 'INTERNAL_ERROR', 'Severity', 'VERBOSE', 'WARNING', 'log', 'min_severity',
    }),
    'ILogger': frozenset({
        'ERROR', 'INFO', 'INTERNAL_ERROR', 'Severity', 'VERBOSE', 'WARNING', 'log',
    }),
    'Builder': frozenset({
        'build_serialized_network', 'create_builder_config', 'create_network', 'create_optimization_profile',
        'error_recorder', 'get_plugin_registry', 'gpu_allocator', 'is_network_supported', 'logger',
        'max_DLA_batch_size', 'max_threads', 'num_DLA_cores', 'platform_has_fast_fp16',
        'platform_has_fast_int8', 'platform_has_tf32', 'reset',
    }),
    'INetworkDefinition': frozenset({
        '__getitem__', '__len__', 'add_activation', 'add_assertion', 'add_cast', 'add_concatenation',
        'add_constant', 'add_convolution_nd', 'add_deconvolution_nd', 'add_dequantize', 'add_einsum',
        'add_elementwise', 'add_fill', 'add_gather', 'add_gather_v2', 'add_grid_sample', 'add_identity',
        'add_if_conditional', 'add_input', 'add_loop', 'add_lrn', 'add_matrix_multiply', 'add_nms',
        'add_non_zero', 'add_normalization', 'add_one_hot', 'add_padding_nd', 'add_parametric_relu',
        'add_plugin_v2', 'add_plugin_v3', 'add_pooling_nd', 'add_quantize', 'add_ragged_softmax',
        'add_reduce', 'add_resize', 'add_reverse_sequence', 'add_scale', 'add_scale_nd', 'add_scatter',
        'add_select', 'add_shape', 'add_shuffle', 'add_slice', 'add_softmax', 'add_topk', 'add_unary',
        'are_weights_marked_refittable', 'builder', 'error_recorder', 'flags', 'get_flag', 'get_input',
        'get_layer', 'get_output', 'has_implicit_batch_dimension', 'is_debug_tensor', 'mark_debug',
        'mark_output', 'mark_output_for_shapes', 'mark_weights_refittable', 'name', 'num_inputs',
        'num_layers', 'num_outputs', 'remove_tensor', 'serialize', 'set_weights_name', 'unmark_debug',
        'unmark_output', 'unmark_output_for_shapes', 'unmark_weights_refittable',
    }),
    'NetworkDefinitionCreationFlag': frozenset({
        'EXPLICIT_BATCH', 'STRONGLY_TYPED',
    }),
    'OnnxParser': frozenset({
        'clear_errors', 'clear_flag', 'flags', 'get_error', 'get_flag', 'get_layer_output_tensor',
        'get_subgraph_nodes', 'get_used_vc_plugin_libraries', 'is_subgraph_supported', 'num_errors',
        'num_subgraphs', 'parse', 'parse_from_file', 'parse_with_weight_descriptors', 'set_flag',
        'supports_model', 'supports_model_v2', 'supports_operator',
    }),
    'ParserError': frozenset({
        'code', 'desc', 'file', 'func', 'line', 'local_function_stack', 'local_function_stack_size', 'node',
        'node_name', 'node_operator',
    }),
    'ErrorCode': frozenset({
        'INTERNAL_ERROR', 'INVALID_GRAPH', 'INVALID_NODE', 'INVALID_VALUE', 'MEM_ALLOC_FAILED',
        'MODEL_DESERIALIZE_FAILED', 'REFIT_FAILED', 'SUCCESS', 'UNSUPPORTED_GRAPH', 'UNSUPPORTED_NODE',
        'UNSUPPORTED_NODE_ATTR', 'UNSUPPORTED_NODE_DATATYPE', 'UNSUPPORTED_NODE_DYNAMIC',
        'UNSUPPORTED_NODE_INPUT', 'UNSUPPORTED_NODE_SHAPE',
    }),
    'IBuilderConfig': frozenset({
        'DLA_core', 'add_optimization_profile', 'algorithm_selector', 'avg_timing_iterations',
        'builder_optimization_level', 'can_run_on_DLA', 'clear_flag', 'clear_quantization_flag',
        'create_timing_cache', 'default_device_type', 'engine_capability', 'flags',
        'get_calibration_profile', 'get_device_type', 'get_flag', 'get_memory_pool_limit',
        'get_preview_feature', 'get_quantization_flag', 'get_tactic_sources', 'get_timing_cache',
        'hardware_compatibility_level', 'int8_calibrator', 'is_device_type_set', 'max_aux_streams',
        'num_optimization_profiles', 'plugins_to_serialize', 'profile_stream', 'profiling_verbosity',
        'progress_monitor', 'quantization_flags', 'reset', 'reset_device_type', 'runtime_platform',
        'set_calibration_profile', 'set_device_type', 'set_flag', 'set_memory_pool_limit',
        'set_preview_feature', 'set_quantization_flag', 'set_tactic_sources', 'set_timing_cache',
    }),
    'BuilderFlag': frozenset({
        'BF16', 'DEBUG', 'DIRECT_IO', 'DISABLE_COMPILATION_CACHE', 'DISABLE_TIMING_CACHE',
        'ERROR_ON_TIMING_CACHE_MISS', 'EXCLUDE_LEAN_RUNTIME', 'FP16', 'FP8', 'GPU_FALLBACK', 'INT4', 'INT8',
        'OBEY_PRECISION_CONSTRAINTS', 'PREFER_PRECISION_CONSTRAINTS', 'REFIT', 'REFIT_IDENTICAL',
        'REFIT_INDIVIDUAL', 'REJECT_EMPTY_ALGORITHMS', 'SAFETY_SCOPE', 'SPARSE_WEIGHTS', 'STRIP_PLAN',
        'TF32', 'VERSION_COMPATIBLE', 'WEIGHTLESS', 'WEIGHT_STREAMING',
    }),
    'MemoryPoolType': frozenset({
        'DLA_GLOBAL_DRAM', 'DLA_LOCAL_DRAM', 'DLA_MANAGED_SRAM', 'TACTIC_DRAM', 'TACTIC_SHARED_MEMORY',
        'WORKSPACE',
    }),
    'IOptimizationProfile': frozenset({
        '__bool__', 'extra_memory_target', 'get_shape', 'get_shape_input', 'set_shape', 'set_shape_input',
    }),
    'ILayer': frozenset({
        'get_input', 'get_output', 'get_output_type', 'metadata', 'name', 'num_inputs', 'num_outputs',
        'output_type_is_set', 'precision', 'precision_is_set', 'reset_output_type', 'reset_precision',
        'set_input', 'set_output_type', 'type',
    }),
    'LayerType': frozenset({
        'ACTIVATION', 'ASSERTION', 'CAST', 'CONCATENATION', 'CONDITION', 'CONDITIONAL_INPUT',
        'CONDITIONAL_OUTPUT', 'CONSTANT', 'CONVOLUTION', 'DECONVOLUTION', 'DEQUANTIZE', 'EINSUM',
        'ELEMENTWISE', 'FILL', 'GATHER', 'GRID_SAMPLE', 'IDENTITY', 'ITERATOR', 'LOOP_OUTPUT', 'LRN',
        'MATRIX_MULTIPLY', 'NMS', 'NON_ZERO', 'NORMALIZATION', 'ONE_HOT', 'PADDING', 'PARAMETRIC_RELU',
        'PLUGIN', 'PLUGIN_V2', 'PLUGIN_V3', 'POOLING', 'QUANTIZE', 'RAGGED_SOFTMAX', 'RECURRENCE', 'REDUCE',
        'RESIZE', 'REVERSE_SEQUENCE', 'SCALE', 'SCATTER', 'SELECT', 'SHAPE', 'SHUFFLE', 'SLICE', 'SOFTMAX',
        'TOPK', 'TRIP_LIMIT', 'UNARY',
    }),
    'DataType': frozenset({
        'BF16', 'BOOL', 'FLOAT', 'FP8', 'HALF', 'INT32', 'INT4', 'INT64', 'INT8', 'UINT8',
    }),
    'TensorIOMode': frozenset({
        'INPUT', 'NONE', 'OUTPUT',
    }),
    'Runtime': frozenset({
        'DLA_core', 'deserialize_cuda_engine', 'engine_host_code_allowed', 'error_recorder',
        'get_plugin_registry', 'gpu_allocator', 'load_runtime', 'logger', 'max_threads', 'num_DLA_cores',
        'tempfile_control_flags', 'temporary_directory',
    }),
    'ICudaEngine': frozenset({
        '__getitem__', 'create_engine_inspector', 'create_execution_context',
        'create_execution_context_without_device_memory', 'create_serialization_config',
        'device_memory_size', 'device_memory_size_v2', 'engine_capability', 'error_recorder',
        'get_device_memory_size_for_profile', 'get_device_memory_size_for_profile_v2',
        'get_tensor_bytes_per_component', 'get_tensor_components_per_element', 'get_tensor_dtype',
        'get_tensor_format', 'get_tensor_format_desc', 'get_tensor_location', 'get_tensor_mode',
        'get_tensor_name', 'get_tensor_profile_shape', 'get_tensor_profile_values', 'get_tensor_shape',
        'get_tensor_vectorized_dim', 'get_weight_streaming_automatic_budget', 'hardware_compatibility_level',
        'has_implicit_batch_dimension', 'is_debug_tensor', 'is_shape_inference_io',
        'minimum_weight_streaming_budget', 'name', 'num_aux_streams', 'num_io_tensors', 'num_layers',
        'num_optimization_profiles', 'profiling_verbosity', 'refittable', 'serialize',
        'serialize_with_config', 'streamable_weights_size', 'tactic_sources', 'weight_streaming_budget',
        'weight_streaming_budget_v2', 'weight_streaming_scratch_memory_size',
    }),
    'IExecutionContext': frozenset({
        'active_optimization_profile', 'all_binding_shapes_specified', 'all_shape_inputs_specified',
        'debug_sync', 'device_memory', 'engine', 'enqueue_emits_profile', 'error_recorder',
        'execute_async_v3', 'execute_v2', 'get_debug_listener', 'get_debug_state',
        'get_input_consumed_event', 'get_max_output_size', 'get_output_allocator', 'get_tensor_address',
        'get_tensor_shape', 'get_tensor_strides', 'infer_shapes', 'name', 'nvtx_verbosity',
        'persistent_cache_limit', 'profiler', 'report_to_profiler', 'set_all_tensors_debug_state',
        'set_aux_streams', 'set_debug_listener', 'set_device_memory', 'set_input_consumed_event',
        'set_input_shape', 'set_optimization_profile_async', 'set_output_allocator', 'set_tensor_address',
        'set_tensor_debug_state', 'temporary_allocator', 'update_device_memory_size_for_shapes',
    }),
    'ExecutionContextAllocationStrategy': frozenset({
        'ON_PROFILE_CHANGE', 'STATIC', 'USER_MANAGED',
    }),
    'IHostMemory': frozenset({
        'dtype', 'nbytes',
    }),
    'IErrorRecorder': frozenset({
        'MAX_DESC_LENGTH', 'clear', 'get_error_code', 'get_error_desc', 'has_overflowed', 'num_errors',
        'report_error',
    }),
    'ErrorCodeTRT': frozenset({
        'FAILED_ALLOCATION', 'FAILED_COMPUTATION', 'FAILED_EXECUTION', 'FAILED_INITIALIZATION',
        'INTERNAL_ERROR', 'INVALID_ARGUMENT', 'INVALID_CONFIG', 'INVALID_STATE', 'SUCCESS',
        'UNSPECIFIED_ERROR', 'UNSUPPORTED_STATE',
    }),
    'ITensor': frozenset({
        'allowed_formats', 'broadcast_across_batch', 'dtype', 'dynamic_range', 'get_dimension_name',
        'is_execution_tensor', 'is_network_input', 'is_network_output', 'is_shape_tensor', 'location',
        'name', 'reset_dynamic_range', 'set_dimension_name', 'set_dynamic_range', 'shape',
    }),
    'IQuantizeLayer': frozenset({
        'axis', 'to_type',
    }),
    'IDequantizeLayer': frozenset({
        'axis', 'to_type',
    }),
    'ICastLayer': frozenset({
        'to_type',
    }),
    'ProfilingVerbosity': frozenset({
        'DETAILED', 'LAYER_NAMES_ONLY', 'NONE',
    }),
    'QuantizationFlag': frozenset({
        'CALIBRATE_BEFORE_FUSION',
    }),
    'CalibrationAlgoType': frozenset({
        'ENTROPY_CALIBRATION', 'ENTROPY_CALIBRATION_2', 'LEGACY_CALIBRATION', 'MINMAX_CALIBRATION',
    }),
    'IInt8EntropyCalibrator2': frozenset({
        'get_algorithm', 'get_batch', 'get_batch_size', 'read_calibration_cache', 'write_calibration_cache',
    }),
}

# Names present in the TensorRT 11 Python bindings (read at v11.1; see docstring for
# the 11.2-11.4 caveat). [S2]  Classes absent from 11 (QuantizationFlag,
# CalibrationAlgoType, IInt8EntropyCalibrator2) are simply not keys here.
TRT_11: dict[str, frozenset[str]] = {
    'tensorrt': frozenset({
        'APILanguage', 'ActivationType', 'AllocatorFlag', 'AttentionIOForm', 'AttentionNormalizationOp',
        'BoundingBoxFormat', 'Builder', 'BuilderFlag', 'CausalMaskKind', 'CollectiveOperation',
        'CumulativeOperation', 'DataType', 'DeviceType', 'DimensionOperation', 'Dims', 'Dims2', 'Dims3',
        'Dims4', 'DimsExprs', 'DimsHW', 'DynamicPluginTensorDesc', 'ElementWiseOperation',
        'EngineCapability', 'EngineInspector', 'EngineStat', 'ErrorCode', 'ErrorCodeTRT',
        'ExecutionContextAllocationStrategy', 'FallbackString', 'FillOperation', 'GatherMode',
        'HardwareCompatibilityLevel', 'IActivationLayer', 'IAssertionLayer', 'IAttention',
        'IAttentionBoundaryLayer', 'IAttentionInputLayer', 'IAttentionOutputLayer', 'IBuilderConfig',
        'ICastLayer', 'IConcatenationLayer', 'IConditionLayer', 'IConstantLayer', 'IConvolutionLayer',
        'ICudaEngine', 'ICumulativeLayer', 'IDebugListener', 'IDeconvolutionLayer', 'IDequantizeLayer',
        'IDimensionExpr', 'IDistCollectiveLayer', 'IDynamicQuantizeLayer', 'IEinsumLayer',
        'IElementWiseLayer', 'IErrorRecorder', 'IExecutionContext', 'IExprBuilder', 'IFillLayer',
        'IGatherLayer', 'IGpuAllocator', 'IGpuAsyncAllocator', 'IGridSampleLayer', 'IHostMemory',
        'IIdentityLayer', 'IIfConditional', 'IIfConditionalBoundaryLayer', 'IIfConditionalInputLayer',
        'IIfConditionalOutputLayer', 'IIteratorLayer', 'IKVCacheUpdateLayer', 'ILRNLayer', 'ILayer',
        'ILogger', 'ILoop', 'ILoopBoundaryLayer', 'ILoopOutputLayer', 'IMatrixMultiplyLayer', 'IMoELayer',
        'INMSLayer', 'INetworkDefinition', 'INonZeroLayer', 'INormalizationLayer', 'IOneHotLayer',
        'IOptimizationProfile', 'IOutputAllocator', 'IPaddingLayer', 'IParametricReLULayer',
        'IPluginCapability', 'IPluginCreator', 'IPluginCreatorInterface', 'IPluginCreatorV3One',
        'IPluginCreatorV3Quick', 'IPluginRegistry', 'IPluginResource', 'IPluginResourceContext', 'IPluginV2',
        'IPluginV2DynamicExt', 'IPluginV2DynamicExtBase', 'IPluginV2Ext', 'IPluginV2Layer', 'IPluginV3',
        'IPluginV3Layer', 'IPluginV3OneBuild', 'IPluginV3OneBuildV2', 'IPluginV3OneCore',
        'IPluginV3OneRuntime', 'IPluginV3QuickAOTBuild', 'IPluginV3QuickBuild', 'IPluginV3QuickCore',
        'IPluginV3QuickRuntime', 'IPoolingLayer', 'IProfiler', 'IProgressMonitor', 'IQuantizeLayer',
        'IRaggedSoftMaxLayer', 'IRecurrenceLayer', 'IReduceLayer', 'IResizeLayer', 'IReverseSequenceLayer',
        'IRotaryEmbeddingLayer', 'IRuntimeConfig', 'IScaleLayer', 'IScatterLayer', 'ISelectLayer',
        'ISerializationConfig', 'IShapeLayer', 'IShuffleLayer', 'ISliceLayer', 'ISoftMaxLayer',
        'ISqueezeLayer', 'IStreamReaderV2', 'IStreamWriter', 'ISymExpr', 'ISymExprs', 'ITensor',
        'ITimingCache', 'ITopKLayer', 'ITripLimitLayer', 'IUnaryLayer', 'IUnsqueezeLayer',
        'IVersionedInterface', 'InterfaceInfo', 'InterpolationMode', 'KVCacheMode', 'KernelLaunchParams',
        'LayerInformationFormat', 'LayerType', 'Logger', 'LoopOutput', 'MatrixOperation', 'MemoryPoolType',
        'MoEActType', 'NetworkDefinitionCreationFlag', 'OnnxParser', 'OnnxParserFlag', 'OnnxParserRefitter',
        'PaddingMode', 'ParserError', 'Permutation', 'PluginArgDataType', 'PluginArgType',
        'PluginCapabilityType', 'PluginCreatorVersion', 'PluginField', 'PluginFieldCollection_',
        'PluginFieldType', 'PluginTensorDesc', 'PoolingType', 'PreviewFeature', 'Profiler',
        'ProfilingVerbosity', 'QuickPluginCreationRequest', 'ReduceOperation', 'Refitter',
        'ResizeCoordinateTransformation', 'ResizeRoundMode', 'ResizeSelector', 'Runtime', 'RuntimePlatform',
        'SampleMode', 'ScaleMode', 'ScatterMode', 'SeekPosition', 'SerializationFlag', 'TacticSource',
        'TempfileControlFlag', 'TensorFormat', 'TensorIOMode', 'TensorLocation', 'TensorRTPhase',
        'TilingOptimizationLevel', 'TimingCacheKey', 'TimingCacheValue', 'TopKOperation', 'TripLimit',
        'UnaryOperation', 'Weights', 'WeightsRole', '__version__', 'bfloat16', 'bool', 'e8m0', 'float16',
        'float32', 'fp4', 'fp8', 'get_builder_plugin_registry', 'get_nv_onnx_parser_version',
        'get_plugin_registry', 'init_libnvinfer_plugins', 'int32', 'int4', 'int64', 'int8', 'nptype',
        'uint8', 'volume',
    }),
    'Logger': frozenset({
        'ERROR', 'INFO', 'INTERNAL_ERROR', 'Severity', 'VERBOSE', 'WARNING', 'log', 'min_severity',
    }),
    'ILogger': frozenset({
        'ERROR', 'INFO', 'INTERNAL_ERROR', 'Severity', 'VERBOSE', 'WARNING', 'log',
    }),
    'Builder': frozenset({
        'build_engine_with_config', 'build_serialized_network', 'build_serialized_network_to_stream',
        'create_builder_config', 'create_network', 'create_optimization_profile', 'error_recorder',
        'get_plugin_registry', 'gpu_allocator', 'is_network_supported', 'logger', 'max_DLA_batch_size',
        'max_threads', 'num_DLA_cores', 'reset',
    }),
    'INetworkDefinition': frozenset({
        '__getitem__', '__len__', 'add_activation', 'add_assertion', 'add_attention', 'add_attention_v2',
        'add_cast', 'add_concatenation', 'add_constant', 'add_convolution_nd', 'add_cumulative',
        'add_deconvolution_nd', 'add_dequantize', 'add_dist_collective', 'add_dynamic_quantize',
        'add_dynamic_quantize_v2', 'add_einsum', 'add_elementwise', 'add_fill', 'add_gather',
        'add_gather_v2', 'add_grid_sample', 'add_identity', 'add_if_conditional', 'add_input',
        'add_kv_cache_update', 'add_loop', 'add_lrn', 'add_matrix_multiply', 'add_moe', 'add_nms',
        'add_non_zero', 'add_normalization', 'add_normalization_v2', 'add_one_hot', 'add_padding_nd',
        'add_parametric_relu', 'add_plugin', 'add_plugin_v2', 'add_plugin_v3', 'add_pooling_nd',
        'add_quantize', 'add_ragged_softmax', 'add_reduce', 'add_resize', 'add_reverse_sequence',
        'add_rotary_embedding', 'add_scale', 'add_scale_nd', 'add_scatter', 'add_select', 'add_shape',
        'add_shuffle', 'add_slice', 'add_softmax', 'add_squeeze', 'add_topk', 'add_unary', 'add_unsqueeze',
        'are_weights_marked_refittable', 'builder', 'error_recorder', 'flags', 'get_flag', 'get_input',
        'get_layer', 'get_output', 'has_implicit_batch_dimension', 'is_debug_tensor', 'mark_debug',
        'mark_output', 'mark_output_for_shapes', 'mark_unfused_tensors_as_debug_tensors',
        'mark_weights_refittable', 'name', 'num_inputs', 'num_layers', 'num_outputs', 'remove_tensor',
        'serialize', 'set_weights_name', 'unmark_debug', 'unmark_output', 'unmark_output_for_shapes',
        'unmark_unfused_tensors_as_debug_tensors', 'unmark_weights_refittable',
    }),
    'NetworkDefinitionCreationFlag': frozenset({
        'PREFER_AOT_PYTHON_PLUGINS', 'PREFER_JIT_PYTHON_PLUGINS', 'STRONGLY_TYPED',
    }),
    'OnnxParser': frozenset({
        'clear_errors', 'clear_flag', 'flags', 'get_error', 'get_flag', 'get_layer_output_tensor',
        'get_subgraph_nodes', 'get_used_vc_plugin_libraries', 'is_subgraph_supported', 'load_initializer',
        'load_model_proto', 'num_errors', 'num_subgraphs', 'parse', 'parse_from_file', 'parse_model_proto',
        'set_builder_config', 'set_flag', 'supports_model_v2', 'supports_operator',
    }),
    'ParserError': frozenset({
        'code', 'desc', 'file', 'func', 'line', 'local_function_stack', 'local_function_stack_size', 'node',
        'node_name', 'node_operator',
    }),
    'ErrorCode': frozenset({
        'INTERNAL_ERROR', 'INVALID_GRAPH', 'INVALID_NODE', 'INVALID_VALUE', 'MEM_ALLOC_FAILED',
        'MODEL_DESERIALIZE_FAILED', 'REFIT_FAILED', 'SUCCESS', 'UNSUPPORTED_GRAPH', 'UNSUPPORTED_NODE',
        'UNSUPPORTED_NODE_ATTR', 'UNSUPPORTED_NODE_DATATYPE', 'UNSUPPORTED_NODE_DYNAMIC',
        'UNSUPPORTED_NODE_INPUT', 'UNSUPPORTED_NODE_SHAPE',
    }),
    'IBuilderConfig': frozenset({
        'DLA_core', 'add_optimization_profile', 'all_build_routes', 'avg_timing_iterations', 'build_route',
        'builder_optimization_level', 'can_run_on_DLA', 'clear_flag', 'create_timing_cache',
        'default_device_type', 'engine_capability', 'flags', 'get_device_type', 'get_flag',
        'get_memory_pool_limit', 'get_preview_feature', 'get_tactic_sources', 'get_timing_cache',
        'hardware_compatibility_level', 'is_device_type_set', 'l2_limit_for_tiling', 'max_aux_streams',
        'max_num_tactics', 'num_optimization_profiles', 'plugins_to_serialize', 'profile_stream',
        'profiling_verbosity', 'progress_monitor', 'remote_auto_tuning_config', 'reset', 'reset_device_type',
        'runtime_platform', 'set_device_type', 'set_flag', 'set_memory_pool_limit', 'set_preview_feature',
        'set_tactic_sources', 'set_timing_cache', 'tiling_optimization_level',
    }),
    'BuilderFlag': frozenset({
        'DEBUG', 'DIRECT_IO', 'DISABLE_COMPILATION_CACHE', 'DISABLE_TIMING_CACHE',
        'DISTRIBUTIVE_INDEPENDENCE', 'EDITABLE_TIMING_CACHE', 'ERROR_ON_TIMING_CACHE_MISS',
        'EXCLUDE_LEAN_RUNTIME', 'GPU_FALLBACK', 'MONITOR_MEMORY', 'REFIT', 'REFIT_IDENTICAL',
        'REFIT_INDIVIDUAL', 'SAFETY_SCOPE', 'SPARSE_WEIGHTS', 'STRICT_NANS', 'STRIP_PLAN', 'TF32',
        'VERSION_COMPATIBLE', 'WEIGHT_STREAMING',
    }),
    'MemoryPoolType': frozenset({
        'DLA_GLOBAL_DRAM', 'DLA_LOCAL_DRAM', 'DLA_MANAGED_SRAM', 'TACTIC_DRAM', 'TACTIC_SHARED_MEMORY',
        'WORKSPACE',
    }),
    'IOptimizationProfile': frozenset({
        '__bool__', 'extra_memory_target', 'get_shape', 'get_shape_input', 'set_shape', 'set_shape_input',
    }),
    'ILayer': frozenset({
        'get_input', 'get_output', 'get_output_type', 'metadata', 'name', 'num_inputs', 'num_outputs',
        'num_ranks', 'set_input', 'type',
    }),
    'LayerType': frozenset({
        'ACTIVATION', 'ASSERTION', 'ATTENTION_INPUT', 'ATTENTION_OUTPUT', 'CAST', 'CONCATENATION',
        'CONDITION', 'CONDITIONAL_INPUT', 'CONDITIONAL_OUTPUT', 'CONSTANT', 'CONVOLUTION', 'CUMULATIVE',
        'DECONVOLUTION', 'DEQUANTIZE', 'DIST_COLLECTIVE', 'DYNAMIC_QUANTIZE', 'EINSUM', 'ELEMENTWISE',
        'FILL', 'GATHER', 'GRID_SAMPLE', 'IDENTITY', 'ITERATOR', 'KV_CACHE_UPDATE', 'LOOP_OUTPUT', 'LRN',
        'MATRIX_MULTIPLY', 'MOE', 'NMS', 'NON_ZERO', 'NORMALIZATION', 'ONE_HOT', 'PADDING',
        'PARAMETRIC_RELU', 'PLUGIN', 'PLUGIN_V2', 'PLUGIN_V3', 'POOLING', 'QUANTIZE', 'RAGGED_SOFTMAX',
        'RECURRENCE', 'REDUCE', 'RESIZE', 'REVERSE_SEQUENCE', 'ROTARY_EMBEDDING', 'SCALE', 'SCATTER',
        'SELECT', 'SHAPE', 'SHUFFLE', 'SLICE', 'SOFTMAX', 'SQUEEZE', 'TOPK', 'TRIP_LIMIT', 'UNARY',
        'UNSQUEEZE',
    }),
    'DataType': frozenset({
        'BF16', 'BOOL', 'E8M0', 'FLOAT', 'FP4', 'FP8', 'HALF', 'INT32', 'INT4', 'INT64', 'INT8', 'UINT8',
    }),
    'TensorIOMode': frozenset({
        'INPUT', 'NONE', 'OUTPUT',
    }),
    'Runtime': frozenset({
        'DLA_core', 'deserialize_cuda_engine', 'engine_host_code_allowed', 'error_recorder',
        'get_plugin_registry', 'gpu_allocator', 'load_runtime', 'logger', 'max_threads', 'num_DLA_cores',
        'tempfile_control_flags', 'temporary_directory',
    }),
    'ICudaEngine': frozenset({
        '__getitem__', 'create_engine_inspector', 'create_execution_context', 'create_runtime_config',
        'create_serialization_config', 'device_memory_size_v2', 'engine_capability', 'error_recorder',
        'get_aliased_input_tensor', 'get_device_memory_size_for_profile_v2', 'get_engine_stat',
        'get_tensor_bytes_per_component', 'get_tensor_components_per_element', 'get_tensor_dtype',
        'get_tensor_format', 'get_tensor_format_desc', 'get_tensor_location', 'get_tensor_mode',
        'get_tensor_name', 'get_tensor_profile_shape', 'get_tensor_profile_values', 'get_tensor_shape',
        'get_tensor_vectorized_dim', 'get_weight_streaming_automatic_budget', 'hardware_compatibility_level',
        'is_debug_tensor', 'is_shape_inference_io', 'name', 'num_aux_streams', 'num_io_tensors',
        'num_layers', 'num_optimization_profiles', 'profiling_verbosity', 'refittable', 'serialize',
        'serialize_with_config', 'streamable_weights_size', 'tactic_sources', 'weight_streaming_budget_v2',
        'weight_streaming_scratch_memory_size',
    }),
    'IExecutionContext': frozenset({
        'active_optimization_profile', 'all_binding_shapes_specified', 'debug_sync', 'device_memory',
        'engine', 'enqueue_emits_profile', 'error_recorder', 'execute_async_v3', 'execute_v2',
        'get_debug_listener', 'get_debug_state', 'get_input_consumed_event', 'get_max_output_size',
        'get_output_allocator', 'get_runtime_config', 'get_tensor_address', 'get_tensor_shape',
        'get_tensor_strides', 'infer_shapes', 'name', 'nvtx_verbosity', 'persistent_cache_limit', 'profiler',
        'report_to_profiler', 'set_all_tensors_debug_state', 'set_aux_streams', 'set_communicator',
        'set_debug_listener', 'set_device_memory', 'set_input_consumed_event', 'set_input_shape',
        'set_optimization_profile_async', 'set_output_allocator', 'set_tensor_address',
        'set_tensor_debug_state', 'temporary_allocator', 'unfused_tensors_debug_state',
        'update_device_memory_size_for_shapes',
    }),
    'ExecutionContextAllocationStrategy': frozenset({
        'ON_PROFILE_CHANGE', 'STATIC', 'USER_MANAGED',
    }),
    'IHostMemory': frozenset({
        'dtype', 'nbytes',
    }),
    'IErrorRecorder': frozenset({
        'MAX_DESC_LENGTH', 'clear', 'get_error_code', 'get_error_desc', 'has_overflowed', 'num_errors',
        'report_error',
    }),
    'ErrorCodeTRT': frozenset({
        'FAILED_ALLOCATION', 'FAILED_COMPUTATION', 'FAILED_EXECUTION', 'FAILED_INITIALIZATION',
        'INTERNAL_ERROR', 'INVALID_ARGUMENT', 'INVALID_CONFIG', 'INVALID_STATE', 'SUCCESS',
        'UNSPECIFIED_ERROR', 'UNSUPPORTED_STATE',
    }),
    'ITensor': frozenset({
        'allowed_formats', 'broadcast_across_batch', 'dtype', 'get_dimension_name', 'is_execution_tensor',
        'is_network_input', 'is_network_output', 'is_shape_tensor', 'location', 'name', 'set_dimension_name',
        'shape',
    }),
    'IQuantizeLayer': frozenset({
        'axis', 'block_shape', 'to_type',
    }),
    'IDequantizeLayer': frozenset({
        'axis', 'block_shape', 'to_type',
    }),
    'ICastLayer': frozenset({
        'to_type',
    }),
    'ProfilingVerbosity': frozenset({
        'DETAILED', 'LAYER_NAMES_ONLY', 'NONE',
    }),
}

# Present in 10.3 and absent in 11.1, per class (computed as TRT_10_3[c] - TRT_11[c];
# for classes that disappear entirely, every member is listed).  Consistent with the
# 11.x Python migration "Removed Python APIs" page [S5], except that page also lists
# BuilderFlag.DIRECT_IO, which the v11.1 bindings still define.
REMOVED_IN_11: dict[str, frozenset[str]] = {
    'tensorrt': frozenset({
        'CalibrationAlgoType', 'IAlgorithm', 'IAlgorithmContext', 'IAlgorithmIOInfo', 'IAlgorithmSelector',
        'IAlgorithmVariant', 'IInt8Calibrator', 'IInt8EntropyCalibrator', 'IInt8EntropyCalibrator2',
        'IInt8LegacyCalibrator', 'IInt8MinMaxCalibrator', 'IStreamReader', 'QuantizationFlag',
    }),
    'Builder': frozenset({
        'platform_has_fast_fp16', 'platform_has_fast_int8', 'platform_has_tf32',
    }),
    'NetworkDefinitionCreationFlag': frozenset({
        'EXPLICIT_BATCH',
    }),
    'OnnxParser': frozenset({
        'parse_with_weight_descriptors', 'supports_model',
    }),
    'IBuilderConfig': frozenset({
        'algorithm_selector', 'clear_quantization_flag', 'get_calibration_profile', 'get_quantization_flag',
        'int8_calibrator', 'quantization_flags', 'set_calibration_profile', 'set_quantization_flag',
    }),
    'BuilderFlag': frozenset({
        'BF16', 'FP16', 'FP8', 'INT4', 'INT8', 'OBEY_PRECISION_CONSTRAINTS', 'PREFER_PRECISION_CONSTRAINTS',
        'REJECT_EMPTY_ALGORITHMS', 'WEIGHTLESS',
    }),
    'ILayer': frozenset({
        'output_type_is_set', 'precision', 'precision_is_set', 'reset_output_type', 'reset_precision',
        'set_output_type',
    }),
    'ICudaEngine': frozenset({
        'create_execution_context_without_device_memory', 'device_memory_size',
        'get_device_memory_size_for_profile', 'has_implicit_batch_dimension',
        'minimum_weight_streaming_budget', 'weight_streaming_budget',
    }),
    'IExecutionContext': frozenset({
        'all_shape_inputs_specified',
    }),
    'ITensor': frozenset({
        'dynamic_range', 'reset_dynamic_range', 'set_dynamic_range',
    }),
    'QuantizationFlag': frozenset({
        'CALIBRATE_BEFORE_FUSION',
    }),
    'CalibrationAlgoType': frozenset({
        'ENTROPY_CALIBRATION', 'ENTROPY_CALIBRATION_2', 'LEGACY_CALIBRATION', 'MINMAX_CALIBRATION',
    }),
    'IInt8EntropyCalibrator2': frozenset({
        'get_algorithm', 'get_batch', 'get_batch_size', 'read_calibration_cache', 'write_calibration_cache',
    }),
}

# "Class.name" -> TensorRT version that deprecated it (read from TRT_DEPRECATED /
# "\\deprecated Deprecated in TensorRT X" in NvInfer*.h and "[DEPRECATED] Deprecated in
# TensorRT X" in python/docstrings at v10.3.0 and v10.16 [S1][S3]).  Python names are
# used; where only the C++ header carried the note the mapping C++->Python is mine.
DEPRECATED_IN_10: dict[str, str] = {
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": "10.0",
    "INetworkDefinition.has_implicit_batch_dimension": "10.0",
    "ICudaEngine.has_implicit_batch_dimension": "10.0",
    "ICudaEngine.create_execution_context_without_device_memory": "10.0",
    "ITensor.broadcast_across_batch": "10.0",
    "BuilderFlag.WEIGHTLESS": "10.0",
    "TacticSource.CUBLAS": "10.0",
    "TacticSource.CUDNN": "10.0",
    "TacticSource.CUBLAS_LT": "9.0",
    "ICudaEngine.device_memory_size": "10.1",
    "ICudaEngine.get_device_memory_size_for_profile": "10.1",
    "ICudaEngine.weight_streaming_budget": "10.1",
    "ICudaEngine.minimum_weight_streaming_budget": "10.1",
    "ITensor.dynamic_range": "10.1",
    "ITensor.set_dynamic_range": "10.1",
    "ITensor.reset_dynamic_range": "10.1",
    "IBuilderConfig.int8_calibrator": "10.1",
    "IBuilderConfig.set_calibration_profile": "10.1",
    "IBuilderConfig.get_calibration_profile": "10.1",
    "tensorrt.IInt8Calibrator": "10.1",
    "tensorrt.IInt8EntropyCalibrator": "10.1",
    "tensorrt.IInt8EntropyCalibrator2": "10.1",
    "tensorrt.IInt8MinMaxCalibrator": "10.1",
    "tensorrt.IInt8LegacyCalibrator": "10.1",
    "tensorrt.CalibrationAlgoType": "10.1",
    "QuantizationFlag.CALIBRATE_BEFORE_FUSION": "10.1",
    "OnnxParser.supports_model": "10.1",
    "Builder.platform_has_fast_fp16": "10.5",  # C++ header only
    "Builder.platform_has_fast_int8": "10.5",  # C++ header only
    "Builder.platform_has_tf32": "10.5",       # C++ header only
    "BuilderFlag.DIRECT_IO": "10.7",
    "tensorrt.IStreamReader": "10.7",  # deserialize_cuda_engine(IStreamReader) overload; C++ header
    "BuilderFlag.REJECT_EMPTY_ALGORITHMS": "10.8",
    "IBuilderConfig.algorithm_selector": "10.8",
    "tensorrt.IAlgorithmSelector": "10.8",  # inferred from algorithm_selector deprecation
    "IBuilderConfig.set_quantization_flag": "10.10",    # C++ setQuantizationFlag(s); Python mapping mine
    "IBuilderConfig.get_quantization_flag": "10.10",    # inferred (same block in header)
    "IBuilderConfig.clear_quantization_flag": "10.10",  # inferred
    "IBuilderConfig.quantization_flags": "10.10",       # inferred
    "BuilderFlag.FP16": "10.12",
    "BuilderFlag.INT8": "10.12",
    "BuilderFlag.BF16": "10.12",
    "BuilderFlag.FP8": "10.12",
    "BuilderFlag.INT4": "10.12",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS": "10.12",
    "BuilderFlag.PREFER_PRECISION_CONSTRAINTS": "10.12",
    "ILayer.precision": "10.12",          # C++ setPrecision/getPrecision
    "ILayer.precision_is_set": "10.12",
    "ILayer.reset_precision": "10.12",
    "ILayer.set_output_type": "10.12",
    "ILayer.reset_output_type": "10.12",
    "ILayer.output_type_is_set": "10.12",
    "OnnxParser.parse_with_weight_descriptors": "10.13",
    "INetworkDefinition.add_normalization": "10.15",  # still present in 11.1; use add_normalization_v2 (11)
    "INormalizationLayer.compute_precision": "10.16",  # C++ setComputePrecision
    "BuilderFlag.SAFETY_SCOPE": "10.16",
}

# Deprecated (but still present) in 11.x. [S2]
DEPRECATED_IN_11: dict[str, str] = {
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": "11.0",  # accepted, ignored: always strongly typed
}

# Names that are read/write or read-only PROPERTIES (everything else listed for these
# classes in TRT_10_3 / TRT_11 is a method or an enum member).  Union of both
# versions' kinds; a name only has to be in the version's own set to exist. [S1][S2]
PROPERTIES: dict[str, frozenset[str]] = {
    'Logger': frozenset({
        'min_severity',
    }),
    'Builder': frozenset({
        'error_recorder', 'gpu_allocator', 'logger', 'max_DLA_batch_size', 'max_threads', 'num_DLA_cores',
        'platform_has_fast_fp16', 'platform_has_fast_int8', 'platform_has_tf32',
    }),
    'INetworkDefinition': frozenset({
        'builder', 'error_recorder', 'flags', 'has_implicit_batch_dimension', 'name', 'num_inputs',
        'num_layers', 'num_outputs',
    }),
    'OnnxParser': frozenset({
        'flags', 'num_errors', 'num_subgraphs',
    }),
    'ParserError': frozenset({

    }),
    'IBuilderConfig': frozenset({
        'DLA_core', 'algorithm_selector', 'all_build_routes', 'avg_timing_iterations', 'build_route',
        'builder_optimization_level', 'default_device_type', 'engine_capability', 'flags',
        'hardware_compatibility_level', 'int8_calibrator', 'l2_limit_for_tiling', 'max_aux_streams',
        'max_num_tactics', 'num_optimization_profiles', 'plugins_to_serialize', 'profile_stream',
        'profiling_verbosity', 'progress_monitor', 'quantization_flags', 'remote_auto_tuning_config',
        'runtime_platform', 'tiling_optimization_level',
    }),
    'IOptimizationProfile': frozenset({
        'extra_memory_target',
    }),
    'ILayer': frozenset({
        'metadata', 'name', 'num_inputs', 'num_outputs', 'num_ranks', 'precision', 'precision_is_set',
        'type',
    }),
    'Runtime': frozenset({
        'DLA_core', 'engine_host_code_allowed', 'error_recorder', 'gpu_allocator', 'logger', 'max_threads',
        'num_DLA_cores', 'tempfile_control_flags', 'temporary_directory',
    }),
    'ICudaEngine': frozenset({
        'device_memory_size', 'device_memory_size_v2', 'engine_capability', 'error_recorder',
        'hardware_compatibility_level', 'has_implicit_batch_dimension', 'minimum_weight_streaming_budget',
        'name', 'num_aux_streams', 'num_io_tensors', 'num_layers', 'num_optimization_profiles',
        'profiling_verbosity', 'refittable', 'streamable_weights_size', 'tactic_sources',
        'weight_streaming_budget', 'weight_streaming_budget_v2', 'weight_streaming_scratch_memory_size',
    }),
    'IExecutionContext': frozenset({
        'active_optimization_profile', 'all_binding_shapes_specified', 'all_shape_inputs_specified',
        'debug_sync', 'device_memory', 'engine', 'enqueue_emits_profile', 'error_recorder', 'name',
        'nvtx_verbosity', 'persistent_cache_limit', 'profiler', 'temporary_allocator',
        'unfused_tensors_debug_state',
    }),
    'IHostMemory': frozenset({
        'dtype', 'nbytes',
    }),
    'ITensor': frozenset({
        'allowed_formats', 'broadcast_across_batch', 'dtype', 'dynamic_range', 'is_execution_tensor',
        'is_network_input', 'is_network_output', 'is_shape_tensor', 'location', 'name', 'shape',
    }),
    'IQuantizeLayer': frozenset({
        'axis', 'block_shape', 'to_type',
    }),
    'IDequantizeLayer': frozenset({
        'axis', 'block_shape', 'to_type',
    }),
    'ICastLayer': frozenset({
        'to_type',
    }),
    'IErrorRecorder': frozenset({
        'MAX_DESC_LENGTH',
    }),
}

# ---------------------------------------------------------------------------
# cuda-python: cuda.bindings.runtime  [S6]  (verified in cuda-bindings 12.9.0 and 13.5.0)
# ---------------------------------------------------------------------------
CUDA_RUNTIME: frozenset[str] = frozenset({
    "cudaStream_t",  # inferred (added for tiercel's fake): the type cudaStreamCreate returns
    "cudaStreamCreate", "cudaStreamSynchronize", "cudaStreamDestroy",
    "cudaMallocAsync", "cudaFreeAsync", "cudaMalloc", "cudaFree",
    "cudaMemcpyAsync", "cudaMemcpy", "cudaMemcpyKind", "cudaError_t",
    "cudaGetErrorName", "cudaGetErrorString", "cudaGetDevice", "cudaSetDevice",
    "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaDeviceProp",
    "cudaDriverGetVersion", "cudaRuntimeGetVersion", "cudaDeviceSynchronize",
    "cudaStreamCreateWithFlags", "cudaStreamNonBlocking",
})

# Python signature -> shape of the returned tuple.  "(err, value)" = 2-tuple, value None on
# error; "(err,)" = 1-tuple.  Observed by calling each function without a driver
# (cudaErrorInsufficientDriver) in both 12.9.0 and 13.5.0, plus the docstrings.
CUDA_RUNTIME_RETURNS: dict[str, str] = {
    "cudaStreamCreate()": "(err, cudaStream_t)",
    "cudaStreamCreateWithFlags(flags)": "(err, cudaStream_t)",
    "cudaStreamSynchronize(stream)": "(err,)",
    "cudaStreamDestroy(stream)": "(err,)",
    "cudaMallocAsync(size, hStream)": "(err, int devPtr)",
    "cudaFreeAsync(devPtr, hStream)": "(err,)",
    "cudaMalloc(size)": "(err, int devPtr)",
    "cudaFree(devPtr)": "(err,)",
    "cudaMemcpyAsync(dst, src, count, kind, stream)": "(err,)",
    "cudaMemcpy(dst, src, count, kind)": "(err,)",
    "cudaGetErrorName(error)": "(err, bytes)",   # e.g. (cudaSuccess, b'cudaSuccess')
    "cudaGetErrorString(error)": "(err, bytes)",
    "cudaGetDevice()": "(err, int)",
    "cudaSetDevice(device)": "(err,)",
    "cudaGetDeviceCount()": "(err, int)",
    "cudaGetDeviceProperties(device)": "(err, cudaDeviceProp)",
    "cudaDriverGetVersion()": "(err, int)",     # e.g. 12060 for CUDA 12.6; 0 when no driver
    "cudaRuntimeGetVersion()": "(err, int)",    # 12090 from cuda-bindings 12.9.0, 13050 from 13.5.0
    "cudaDeviceSynchronize()": "(err,)",
}

# Enum members (value in parentheses). cudaError_t.cudaSuccess == 0.
CUDA_MEMCPY_KIND: frozenset[str] = frozenset({
    "cudaMemcpyHostToHost",      # 0
    "cudaMemcpyHostToDevice",    # 1
    "cudaMemcpyDeviceToHost",    # 2
    "cudaMemcpyDeviceToDevice",  # 3
    "cudaMemcpyDefault",         # 4
})
CUDA_ERROR_T_NEEDED: frozenset[str] = frozenset({"cudaSuccess", "cudaErrorInsufficientDriver"})

# cudaDeviceProp fields (attributes on the object): name is BYTES (decode and strip NULs),
# major/minor/totalGlobalMem/multiProcessorCount/integrated are int.
CUDA_DEVICE_PROP_FIELDS: frozenset[str] = frozenset({
    "name", "major", "minor", "totalGlobalMem", "multiProcessorCount", "integrated", "uuid", "pciBusID",
})
# 12.x: cudaMemcpyKind/cudaError_t are Python enum.IntEnum subclasses (EnumType);
# 13.x: they use cuda.bindings' own FastEnum metaclass -- attribute access and int() work
# the same in both; do not rely on isinstance(x, enum.Enum) in fakes/tests.
# 13.x needs the separate `cuda-pathfinder` package importable (import fails without it).
