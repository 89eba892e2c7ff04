process RESOLVE_MODEL {
    tag "${model}/${version ?: 'default'}"
    label 'cpu_small'

    input:
    tuple val(model), val(version), val(task_name), path(overrides), val(overrides_source)  // version/task '': the manifest's first; overrides: a YAML/JSON file or [], and its original path
    val registry     // digest of the registry manifests: an edited manifest reruns the task
    val code         // digest of the Python files this step runs: a change reruns the task

    output:
    tuple path('model.json'), env(N_LOCATIONS), emit: model

    script:
    def args = task.ext.args ?: ''
    def with_version = version ? "--version '${version}'" : ''
    def with_task = task_name ? "--task '${task_name}'" : ''
    def with_overrides = overrides ? "--params ${overrides} --params-source '${overrides_source}'" : ''
    """
    aiod resolve-model --model '${model}' ${with_version} ${with_task} ${with_overrides} --out model.json ${args}
    read -r N_LOCATIONS < model.status
    """

    stub:  // the real check (it reads no image and downloads nothing); no artifact is fetched
    def args = task.ext.args ?: ''
    def with_version = version ? "--version '${version}'" : ''
    def with_task = task_name ? "--task '${task_name}'" : ''
    """
    aiod resolve-model --model '${model}' ${with_version} ${with_task} --out model.json ${args}
    N_LOCATIONS=0
    """
}
