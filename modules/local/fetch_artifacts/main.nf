process FETCH_ARTIFACTS {
    tag "${model.label}"
    label 'cpu_small'
    conda "${projectDir}/envs/${model.family}.yml"

    input:
    tuple val(model), path(spec)   // model: [index, label, subdir, family]; spec: its model.json from RESOLVE_MODEL, with the artifact's locations
    val code                       // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), path('model_fetched.json'), emit: model

    script:
    def args = task.ext.args ?: ''
    """
    export AIOD_FAMILY=${model.family}
    aiod fetch --model ${spec} --out model_fetched.json ${args}
    """

    stub:
    """
    cp ${spec} model_fetched.json
    """
}
