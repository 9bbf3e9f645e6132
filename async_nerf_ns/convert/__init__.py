"""Captures into the dataset layout (like nerfstudio's process_data/, behind `async-nerf-convert`).

- `config`: the command's options, one config per source (`ConvertConfig`: a frame folder, `BagConfig`: a bag);
- `raw_capture.read_raw`: reads and checks a raw capture folder (frames named by timestamp) before writing;
- `bag_convert.convert_bag`: a ROS 1/2 bag in one streaming pass (`bag_messages`: one message's content;
  `bag_frames`: the frames written on writer threads, the resume journal; `tf_chain`: poses from /tf and /tf_static);
- `masks`: `--mask-folder`, masks checked and copied beside the RGB frames;
- `trajectory_files`: RGB poses from a TUM file, a COLMAP model, a transforms.json;
- `frame_poses`: pose samples brought to the frames' times (the project's interpolators), coverage;
- `poses`: axis conventions, scene normalisation;
- `writer`: the layout written from checked streams, validated, moved into place;
- `output_folder`: a staging folder moved into place, never deleting what a user made;
- `convert.convert_raw`: the frame-folder conversion; `errors.RawDataError`.
"""
